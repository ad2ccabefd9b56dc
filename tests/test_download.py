"""The real requests code path against a real HTTP server on 127.0.0.1."""

import gzip
import hashlib
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lightning_gpt.data import CharDataModule
from lightning_gpt.download import download
from lightning_gpt.errors import UserError

BODY = ("It is the east, and Juliet is the sun.\n" * 200).encode()
GOOD_HASH = hashlib.sha256(BODY).hexdigest()
BIG = bytes(range(256)) * 1024  # 256 KiB, served at /big.bin


class Server:
    """Serves BODY at /file.txt (BIG at /big.bin); ``plan`` lists what to do before succeeding.

    A plan item is an HTTP status to answer, ``"slow"`` (wait ``delay`` seconds, then answer
    normally), ``"truncate"`` (announce the whole body, send half of it, close the connection),
    ``"stall"`` (announce the whole body, send 100 bytes, then wait ``delay`` seconds) or ``"gzip"``
    (send the body gzip-compressed, whatever the client asked for).
    """

    def __init__(self):
        self.requests = 0
        self.plan: list[int | str] = []
        self.delay = 0.0
        self.accept_encodings: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                server.accept_encodings.append(self.headers.get("Accept-Encoding"))
                action = server.plan.pop(0) if server.plan else None
                found = {"/file.txt": BODY, "/big.bin": BIG}.get(self.path)
                status = action if isinstance(action, int) else (200 if found is not None else 404)
                body = found if status == 200 else b"no"
                try:
                    if action == "slow":
                        time.sleep(server.delay)
                    self.send_response(status)
                    if action == "gzip":
                        body = gzip.compress(body)
                        self.send_header("Content-Encoding", "gzip")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if action == "stall":
                        self.wfile.write(body[:100])
                        self.wfile.flush()
                        time.sleep(server.delay)
                    self.wfile.write(body[: len(body) // 2] if action == "truncate" else body)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_good_hash_is_cached_and_not_downloaded_again(server, tmp_path):
    dest = tmp_path / "cache" / "corpus.txt"
    assert download(f"{server.url}/file.txt", dest, GOOD_HASH) == dest
    assert dest.read_bytes() == BODY
    assert server.requests == 1
    download(f"{server.url}/file.txt", dest, GOOD_HASH)
    assert server.requests == 1  # already cached with the right hash
    assert list(dest.parent.iterdir()) == [dest]  # no temporary files left


def test_a_kept_file_without_a_hash_is_named(server, tmp_path, capsys):
    """Without a sha256 nothing tells whether the file came from this url (another --data.url reused it
    without a word): a note says which file is used and how to download again."""
    dest = tmp_path / "corpus.txt"
    download(f"{server.url}/file.txt", dest, None)
    assert capsys.readouterr().err == ""
    download(f"{server.url}/other.txt", dest, None)
    assert server.requests == 1 and capsys.readouterr().err == (
        f"note: using {dest} from an earlier download; delete it to download {server.url}/other.txt again\n"
    )


def test_a_verified_cached_file_is_used_silently(server, tmp_path, capsys):
    dest = download(f"{server.url}/file.txt", tmp_path / "x.txt", GOOD_HASH)
    capsys.readouterr()
    download(f"{server.url}/file.txt", dest, GOOD_HASH)  # every fit without --data.path does this
    assert capsys.readouterr().err == "" and server.requests == 1


def test_wrong_hash_leaves_nothing(server, tmp_path):
    dest = tmp_path / "corpus.txt"
    with pytest.raises(UserError, match="sha256"):
        download(f"{server.url}/file.txt", dest, "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_cached_file_with_wrong_hash_is_replaced_with_a_note(server, tmp_path, capsys):
    dest = tmp_path / "corpus.txt"
    dest.write_bytes(b"stale")
    download(f"{server.url}/file.txt", dest, GOOD_HASH)
    assert dest.read_bytes() == BODY and server.requests == 1
    note = f"note: {dest} is not the file expected (sha256); downloading it again\n"
    assert capsys.readouterr().err.startswith(note)  # an edited corpus was replaced without a word


def test_a_wrong_hash_keeps_a_stale_file(server, tmp_path):
    dest = tmp_path / "corpus.txt"
    dest.write_bytes(b"stale")
    with pytest.raises(UserError, match="sha256"):
        download(f"{server.url}/file.txt", dest, "0" * 64)
    assert dest.read_bytes() == b"stale" and list(tmp_path.iterdir()) == [dest]


def test_404_names_the_url_and_the_manual_way(server, tmp_path):
    dest = tmp_path / "x.txt"
    with pytest.raises(UserError, match=r"missing\.txt: HTTP 404.*--data\.path") as error:
        download(f"{server.url}/missing.txt", dest, GOOD_HASH, backoff=0)
    assert f"or place it at {dest}" in str(error.value)
    assert server.requests == 1  # a 404 is not retried
    assert list(tmp_path.iterdir()) == []


def test_server_errors_are_retried(server, tmp_path):
    server.plan = [503, 500]
    dest = download(f"{server.url}/file.txt", tmp_path / "x.txt", GOOD_HASH, retries=3, backoff=0.01)
    assert dest.read_bytes() == BODY and server.requests == 3


def test_retries_wait_the_backoff_then_twice_as_long_each_time(server, tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)  # no slow answers planned: every wait is a retry's
    server.plan = [503, 503, 503]
    download(f"{server.url}/file.txt", tmp_path / "x.txt", GOOD_HASH, retries=3, backoff=1.5)
    assert waits == [1.5, 3.0, 6.0] and server.requests == 4


def test_by_default_three_retries_wait_1_2_and_4_seconds(server, tmp_path, monkeypatch):
    """What docs/troubleshooting.md promises."""
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    server.plan = [503] * 10
    with pytest.raises(UserError, match="after 4 attempts"):
        download(f"{server.url}/file.txt", tmp_path / "x.txt", GOOD_HASH)
    assert waits == [1.0, 2.0, 4.0]


def test_persistent_server_errors_give_up_clearly(server, tmp_path):
    server.plan = [500] * 10
    with pytest.raises(UserError, match="after 3 attempts"):
        download(f"{server.url}/file.txt", tmp_path / "x.txt", GOOD_HASH, retries=2, backoff=0.01)
    assert list(tmp_path.iterdir()) == []


def test_timeout_is_retried_then_names_the_url(server, tmp_path):
    # a timeout of 1 s: with 0.3 s, a busy machine's stall could keep the server's thread from counting
    server.plan, server.delay = ["slow"] * 5, 2.5
    start = time.monotonic()
    with pytest.raises(
        UserError, match=r"cannot download http://127\.0\.0\.1:\d+/file\.txt after 2 attempts"
    ):
        download(
            f"{server.url}/file.txt", tmp_path / "x.txt", GOOD_HASH, retries=1, timeout=1.0, backoff=0.01
        )
    assert time.monotonic() - start < 2 * 1.0 + 1.5  # two timeouts, not the server's delay
    assert server.requests == 2
    assert list(tmp_path.iterdir()) == []


def test_timeout_message_says_it_timed_out(server, tmp_path):
    server.plan, server.delay = ["slow"], 0.6  # no retry: a busy machine can only make the answer later
    with pytest.raises(UserError, match=r"no answer within the 0\.3 s timeout"):
        download(f"{server.url}/file.txt", tmp_path / "x.txt", retries=0, timeout=0.3)


def test_a_body_that_stalls_midway_says_it_timed_out(server, tmp_path):
    """requests reports a read timeout in the body as a ConnectionError: still a timeout, not "cannot
    connect"."""
    server.plan, server.delay = ["stall"], 1.5
    with pytest.raises(UserError, match=r"no answer within the 0\.5 s timeout"):
        download(f"{server.url}/file.txt", tmp_path / "x.txt", retries=0, timeout=0.5)


def test_tls_to_a_plain_http_server_names_tls(server, tmp_path):
    with pytest.raises(UserError, match="a TLS/SSL error"):
        download(server.url.replace("http://", "https://") + "/file.txt", tmp_path / "x.txt", retries=0)


def test_slow_then_fast_server_succeeds_on_retry(server, tmp_path):
    # a timeout of 1 s: the retry's quick answer must come within it, even on a busy machine
    server.plan, server.delay = ["slow"], 2.5
    dest = download(f"{server.url}/file.txt", tmp_path / "x.txt", GOOD_HASH, timeout=1.0, backoff=0.01)
    assert dest.read_bytes() == BODY and server.requests == 2
    assert list(tmp_path.iterdir()) == [dest]


def test_truncated_body_is_rejected_without_a_hash_and_leaves_nothing(server, tmp_path):
    # No sha256: only the Content-Length check can tell the body is incomplete.
    server.plan = ["truncate"] * 5
    dest = tmp_path / "x.txt"
    with pytest.raises(UserError, match=r"after 2 attempts \(last: the connection closed before"):
        download(f"{server.url}/file.txt", dest, retries=1, backoff=0.01)
    assert server.requests == 2
    assert list(tmp_path.iterdir()) == []  # no partial file under the final name, no .part files


def test_truncated_body_is_retried(server, tmp_path):
    server.plan = ["truncate", "truncate"]
    dest = download(f"{server.url}/file.txt", tmp_path / "x.txt", retries=2, backoff=0.01)
    assert dest.read_bytes() == BODY and server.requests == 3
    assert list(tmp_path.iterdir()) == [dest]


def test_truncated_body_keeps_the_previous_file(server, tmp_path):
    dest = tmp_path / "x.txt"
    dest.write_bytes(b"stale")
    server.plan = ["truncate"] * 5
    with pytest.raises(UserError, match="closed before"):
        download(f"{server.url}/file.txt", dest, GOOD_HASH, retries=0)
    assert dest.read_bytes() == b"stale"  # never a partial file, and no temp file beside it
    assert list(tmp_path.iterdir()) == [dest]


def test_compressed_body_is_not_mistaken_for_a_truncated_one(server, tmp_path):
    # Content-Length counts compressed bytes; the file on disk is the decoded body.
    server.plan = ["gzip"]
    dest = download(f"{server.url}/file.txt", tmp_path / "x.txt", GOOD_HASH, retries=0)
    assert dest.read_bytes() == BODY and server.requests == 1
    assert server.accept_encodings == ["identity"]  # asked uncompressed in the first place


def test_connection_refused_gives_up_clearly(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/file.txt"
    start = time.monotonic()
    with pytest.raises(
        UserError, match=rf"{port}/file\.txt after 3 attempts \(last: cannot connect.*--data\.path"
    ):
        download(url, tmp_path / "x.txt", GOOD_HASH, retries=2, timeout=1, backoff=0.01)
    assert time.monotonic() - start < 2.5
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["ftp://example.invalid/x.txt", "example.com/x.txt", "http://"])
def test_unsupported_or_malformed_urls_are_user_errors(tmp_path, url):
    with pytest.raises(UserError, match=f"cannot download {re.escape(url)}"):
        download(url, tmp_path / "x.txt", backoff=0)
    assert list(tmp_path.iterdir()) == []


def test_the_datamodule_checks_the_downloads_hash(server, tmp_path):
    data = CharDataModule(url=f"{server.url}/file.txt", sha256="0" * 64, cache_dir=str(tmp_path))
    with pytest.raises(UserError, match="sha256"):
        data.prepare_data()
    assert list(tmp_path.iterdir()) == []


def test_large_download_shows_a_progress_bar(server, tmp_path, capsys):
    dest = download(f"{server.url}/big.bin", tmp_path / "big.bin", progress_min_bytes=100_000)
    assert dest.read_bytes() == BIG
    err = capsys.readouterr().err
    assert "downloading big.bin" in err and "100%" in err


@pytest.mark.parametrize("kwargs", [{}, {"progress": False, "progress_min_bytes": 100_000}])
def test_no_progress_bar_when_small_or_disabled(server, tmp_path, capsys, kwargs):
    download(f"{server.url}/big.bin", tmp_path / "big.bin", **kwargs)  # 256 KiB < the 4 MiB default
    assert capsys.readouterr().err == ""

"""The real requests code path against a real HTTP server on 127.0.0.1."""

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lightning_gpt.download import download
from lightning_gpt.errors import UserError

BODY = ("It is the east, and Juliet is the sun.\n" * 200).encode()
GOOD_HASH = hashlib.sha256(BODY).hexdigest()


class Server:
    """Serves BODY at /file.txt; ``plan`` lists status codes to answer before succeeding."""

    def __init__(self):
        self.requests = 0
        self.plan: list[int] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                status = server.plan.pop(0) if server.plan else (200 if self.path == "/file.txt" else 404)
                self.send_response(status)
                body = BODY if status == 200 else b"no"
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
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


def test_wrong_hash_leaves_nothing(server, tmp_path):
    dest = tmp_path / "corpus.txt"
    with pytest.raises(UserError, match="sha256"):
        download(f"{server.url}/file.txt", dest, "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_cached_file_with_wrong_hash_is_replaced(server, tmp_path):
    dest = tmp_path / "corpus.txt"
    dest.write_bytes(b"stale")
    download(f"{server.url}/file.txt", dest, GOOD_HASH)
    assert dest.read_bytes() == BODY and server.requests == 1


def test_404_names_the_url_and_the_manual_way(server, tmp_path):
    with pytest.raises(UserError, match=r"missing\.txt: HTTP 404.*--data\.path"):
        download(f"{server.url}/missing.txt", tmp_path / "x.txt", GOOD_HASH, backoff=0)
    assert server.requests == 1  # a 404 is not retried
    assert list(tmp_path.iterdir()) == []


def test_server_errors_are_retried(server, tmp_path):
    server.plan = [503, 500]
    dest = download(f"{server.url}/file.txt", tmp_path / "x.txt", GOOD_HASH, retries=3, backoff=0.01)
    assert dest.read_bytes() == BODY and server.requests == 3


def test_persistent_server_errors_give_up_clearly(server, tmp_path):
    server.plan = [500] * 10
    with pytest.raises(UserError, match="after 3 attempts"):
        download(f"{server.url}/file.txt", tmp_path / "x.txt", GOOD_HASH, retries=2, backoff=0.01)
    assert list(tmp_path.iterdir()) == []

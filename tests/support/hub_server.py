"""A loopback server speaking the parts of the Hugging Face Hub HTTP protocol parity uses.

Enough for the real ``huggingface_hub`` client: repo creation, repo/revision
info, tree listing, preupload, the LFS batch API with basic PUT transfers,
NDJSON commits (refused with 412 when their parent commit is no longer the
branch head, as the Hub does), README metadata validation, and ``resolve``
downloads (HEAD and GET, with Range). Repos live in memory with git-like
content-addressed blobs and commit shas; every request is logged in
``requests`` so tests can count transfers. Requests the server does not know
are logged in ``unhandled`` and answered 404.

Dataset repos are created through the API (``push``); model repos are made
by the test (``create_model``, ``commit_model``, ``tag``) and only read.
As on the Hub, a model's LFS files (weights) are not served by ``resolve``
itself: it answers 302 with the file's metadata (X-Repo-Commit,
X-Linked-Etag, X-Linked-Size) and a Location on a second origin, the "CDN"
(another port, so the client neither follows the HEAD's redirect nor sends
its token there). ``drop_at`` cuts a file's transfers at a byte offset, the
way a dropped connection does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

WRITE = "write"
READ = "read"
# The hub fixture's tokens. Defined here rather than in conftest.py: with
# several test directories collected, `import conftest` may find another one.
WRITE_TOKEN = "hf_test_write_token"
READ_TOKEN = "hf_test_read_token"
GITATTRIBUTES = b"*.zarr/** filter=lfs diff=lfs merge=lfs -text\n"
# What the Hub's default .gitattributes of a model repo sends to LFS.
MODEL_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".onnx", ".model")
MODEL_GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in MODEL_LFS_SUFFIXES).encode()


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Entry:
    oid: str  # git blob id (of the pointer file for LFS files)
    size: int
    sha256: str | None = None  # set for LFS files

    def tree_json(self, path: str) -> dict:
        d = {"type": "file", "oid": self.oid, "size": self.size, "path": path}
        if self.sha256:
            d["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 130}
        return d


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict = field(default_factory=dict)  # sha -> {path: Entry}
    refs: dict = field(default_factory=dict)  # branch -> sha
    tags: dict = field(default_factory=dict)  # tag -> sha
    kind: str = "dataset"  # dataset | model

    def sha(self, rev: str) -> str:
        return self.refs.get(rev) or self.tags.get(rev) or rev


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    status: int


@dataclass(frozen=True)
class Sent:
    """File content that left the server (a whole file, a Range, or the part before a drop)."""

    kind: str
    repo_id: str
    path: str
    start: int
    size: int
    complete: bool  # False: the connection was dropped before the promised bytes were sent


class HubServer:
    """Start with ``with HubServer() as hub:``; ``hub.endpoint`` is its base URL."""

    def __init__(self, *, tokens: dict[str, str] | None = None, lfs_threshold: int | None = None):
        self.tokens = dict(tokens or {})
        self.lfs_threshold = lfs_threshold  # files at least this big are LFS; None: all regular
        self.repos: dict[str, Repo] = {}  # dataset repos
        self.models: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # git oid -> content (regular files)
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.upload_tickets: dict[str, str] = {}  # ticket -> expected sha256
        self.requests: list[Logged] = []
        self.sent: list[Sent] = []
        # repo path -> byte offset: every transfer of that file (of any repo)
        # stops there and the connection is closed, until the entry is removed.
        self.drop_at: dict[str, int] = {}
        self.unhandled: list[str] = []
        self.fail_next: list[int] = []  # statuses to answer the next requests with (flaky Hub)
        self.fail_route: dict[str, list[int]] = {}  # route name -> statuses for its next requests
        # Run (outside the lock) when a commit request arrives, before it is
        # checked: lets a test land another commit between a client's read of
        # the head and its commit.
        self.before_commit: list[Callable[[], None]] = []
        self.lock = threading.RLock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.httpd.daemon_threads = True
        self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.cdn.daemon_threads = True
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self.httpd, self.cdn)]

    # -- lifecycle --------------------------------------------------------
    @property
    def endpoint(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn_endpoint(self) -> str:
        host, port = self.cdn.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "HubServer":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        for s in (self.httpd, self.cdn):
            s.shutdown()
            s.server_close()

    # -- test helpers -----------------------------------------------------
    def clear_log(self) -> None:
        with self.lock:
            self.requests.clear()
            self.sent.clear()

    def count(self, method: str, pattern: str = "") -> int:
        rx = re.compile(pattern)
        return sum(1 for r in self.requests if r.method == method and rx.search(r.path))

    def downloads(self) -> list[str]:
        """Repo paths whose content was sent (GET on resolve)."""
        out = []
        for r in self.requests:
            m = re.match(r"^/datasets/[^/]+/[^/]+/resolve/[^/]+/(.+)$", r.path)
            if r.method == "GET" and m and r.status in (200, 206):
                out.append(m.group(1))
        return out

    def model_downloads(self, repo_id: str, *, complete: bool = True) -> list[str]:
        """Paths of a model repo whose content was sent (complete transfers only, unless ``complete=False``)."""
        return [s.path for s in self.sent
                if s.kind == "model" and s.repo_id == repo_id and (s.complete or not complete)]

    def uploads(self) -> int:
        """Requests that carried file content: LFS PUTs and commits."""
        return self.count("PUT", r"^/lfs-upload/") + self.count("POST", r"/commit/")

    def _repos(self, kind: str) -> dict[str, Repo]:
        return self.models if kind == "model" else self.repos

    def files(self, repo_id: str, revision: str = "main", *, kind: str = "dataset") -> dict[str, Entry]:
        repo = self._repos(kind)[repo_id]
        return dict(repo.commits[repo.sha(revision)])

    def content(self, entry: Entry) -> bytes:
        return self.lfs[entry.sha256] if entry.sha256 else self.blobs[entry.oid]

    def commit_files(self, repo_id: str, changes: dict[str, bytes | None], message: str = "edit", *,
                     kind: str = "dataset") -> str:
        """A commit on main made outside the HTTP API (None deletes a path); its sha."""
        with self.lock:
            repo = self._repos(kind)[repo_id]
            files = dict(repo.commits[repo.refs["main"]])
            for path, data in changes.items():
                if data is None:
                    files.pop(path, None)
                else:
                    files[path] = self._store(data, kind == "model" and path.endswith(MODEL_LFS_SUFFIXES))
            return self._commit(repo, "main", files, message)

    def create_model(self, repo_id: str, files: dict[str, bytes], *, private: bool = False) -> str:
        """A model repo whose main holds ``files`` (weights in LFS, as on the Hub); the commit's sha."""
        with self.lock:
            repo = Repo(repo_id, private, kind="model")
            self.models[repo_id] = repo
            self._commit(repo, "main", {".gitattributes": self._store(MODEL_GITATTRIBUTES, False)}, "initial commit")
        return self.commit_model(repo_id, files, "upload model")

    def commit_model(self, repo_id: str, changes: dict[str, bytes | None], message: str = "edit") -> str:
        return self.commit_files(repo_id, changes, message, kind="model")

    def tag(self, repo_id: str, name: str, sha: str | None = None, *, kind: str = "model") -> None:
        with self.lock:
            repo = self._repos(kind)[repo_id]
            repo.tags[name] = sha or repo.refs["main"]

    def tamper(self, repo_id: str, path: str) -> None:
        """Changes a stored file's bytes behind the recorded oid (a corrupt mirror)."""
        entry = self.files(repo_id)[path]
        data = bytearray(self.content(entry))
        data[len(data) // 2] ^= 0xFF
        if entry.sha256:
            self.lfs[entry.sha256] = bytes(data)
        else:
            self.blobs[entry.oid] = bytes(data)

    # -- repository model -------------------------------------------------
    def _store(self, data: bytes, lfs: bool) -> Entry:
        if lfs:
            sha = hashlib.sha256(data).hexdigest()
            self.lfs[sha] = data
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()
            return Entry(git_blob_oid(pointer), len(data), sha)
        oid = git_blob_oid(data)
        self.blobs[oid] = data
        return Entry(oid, len(data))

    def _commit(self, repo: Repo, branch: str, files: dict, message: str) -> str:
        parent = repo.refs.get(branch)
        tree = json.dumps(sorted((p, e.oid) for p, e in files.items()))
        sha = hashlib.sha1(f"tree {tree}\nparent {parent}\n\n{message}\n{secrets.token_hex(4)}".encode()).hexdigest()
        repo.commits[sha] = files
        repo.refs[branch] = sha
        return sha

    def create(self, repo_id: str, private: bool = False) -> Repo:
        """An empty dataset repo (what ``create_repo`` makes)."""
        repo = Repo(repo_id, private)
        self.repos[repo_id] = repo
        self._commit(repo, "main", {".gitattributes": self._store(GITATTRIBUTES, False)}, "initial commit")
        return repo


# -- HTTP -------------------------------------------------------------------
class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.headers, self.body = status, code, headers or {}, body or {}


_API_REPO = r"/api/datasets/(?P<org>[^/]+)/(?P<name>[^/]+)"
# Read-only endpoints serve both kinds; a model's URLs have no prefix on resolve.
_API_ANY = r"/api/(?P<kinds>datasets|models)/(?P<org>[^/]+)/(?P<name>[^/]+)"
_RESOLVE = r"^/(?:(?P<kinds>datasets)/)?(?P<org>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
_CDN = r"^/lfs-cdn/(?P<sha256>[0-9a-f]{64})/(?P<org>[^/]+)/(?P<name>[^/]+)/(?P<path>.+)$"
ROUTES = [
    ("POST", r"^/api/repos/create$", "create_repo"),
    ("GET", _API_ANY + r"(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),
    ("GET", _API_ANY + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$", "tree"),
    ("POST", _API_REPO + r"/preupload/(?P<rev>[^/]+)$", "preupload"),
    ("POST", _API_REPO + r"/commit/(?P<rev>[^/]+)$", "commit"),
    ("POST", r"^/api/validate-yaml$", "validate_yaml"),
    ("POST", r"^/datasets/(?P<org>[^/]+)/(?P<name>[^/]+)\.git/info/lfs/objects/batch$", "lfs_batch"),
    ("PUT", r"^/lfs-upload/(?P<ticket>[0-9a-f]+)$", "lfs_put"),
    ("GET", _RESOLVE, "resolve"),
    ("HEAD", _RESOLVE, "resolve"),
    ("GET", _CDN, "cdn"),
    ("HEAD", _CDN, "cdn"),
]


def _kind(kinds: str | None) -> str:
    return "dataset" if kinds == "datasets" else "model"


class _Plumbing(BaseHTTPRequestHandler):
    """Routing, replies, tokens and repo lookup; the endpoints are in the classes below."""

    protocol_version = "HTTP/1.1"
    hub: "HubServer"  # set by handler_for

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # -- plumbing -----------------------------------------------------
    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        status = 500
        try:
            with self.hub.lock:
                fail = self.hub.fail_next.pop(0) if self.hub.fail_next else None
            if fail:
                raise HubError(fail, "injected failure")
            self._check_token()
            for m, pattern, name in ROUTES:
                match = re.match(pattern, url.path) if m == method else None
                if match:
                    with self.hub.lock:
                        queue = self.hub.fail_route.get(name)
                        fail = queue.pop(0) if queue else None
                    if fail:
                        raise HubError(fail, "injected failure")
                    args = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                    status = getattr(self, name)(**args)
                    break
            else:
                with self.hub.lock:
                    self.hub.unhandled.append(f"{method} {self.path}")
                raise HubError(404, f"not served by the test hub: {method} {url.path}")
        except HubError as e:
            status = e.status
            self._send_json({"error": str(e), **e.body}, status, {**({"X-Error-Code": e.code} if e.code else {}), "X-Error-Message": str(e), **e.headers})
        finally:
            with self.hub.lock:
                self.hub.requests.append(Logged(method, unquote(url.path), status))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> int:
        self.send_response(status)
        headers = {"Content-Type": "application/octet-stream", **(headers or {})}
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        return status

    def _send_json(self, obj, status: int = 200, headers: dict | None = None) -> int:
        return self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _json_body(self):
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, "body is not JSON") from None

    # -- auth ---------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:] if auth.startswith("Bearer ") else None

    def _check_token(self) -> None:
        tok = self._token()
        if tok is not None and tok not in self.hub.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")

    def _require_write(self) -> None:
        tok = self._token()
        if tok is None:
            raise HubError(401, "You must be authenticated to write")
        if self.hub.tokens.get(tok) != WRITE:
            raise HubError(403, "Your token does not have write access")

    def _repo(self, org: str, name: str, kinds: str | None = "datasets") -> Repo:
        repo = self.hub._repos(_kind(kinds)).get(f"{org}/{name}")
        if repo is None or (repo.private and self._token() not in self.hub.tokens):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _revision(self, repo: Repo, rev: str | None) -> tuple[str, dict]:
        rev = rev or "main"
        sha = repo.sha(rev)
        if sha not in repo.commits:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return sha, repo.commits[sha]


class _RepoEndpoints(_Plumbing):
    """Creating a repo and reading what it holds: info and tree listings."""

    def create_repo(self) -> int:
        self._require_write()
        body = self._json_body()
        if body.get("type") != "dataset":
            raise HubError(400, "the test hub only hosts dataset repos")
        repo_id = f"{body.get('organization') or 'user'}/{body['name']}"
        url = f"{self.hub.endpoint}/datasets/{repo_id}"
        with self.hub.lock:
            if repo_id in self.hub.repos:
                raise HubError(409, "You already created this dataset repo", body={"url": url})
            self.hub.create(repo_id, bool(body.get("private")) or body.get("visibility") == "private")
        return self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def repo_info(self, kinds, org, name, rev=None) -> int:
        repo = self._repo(org, name, kinds)
        sha, files = self._revision(repo, rev)
        return self._send_json({
            "id": repo.repo_id, "author": org, "sha": sha, "private": repo.private,
            "siblings": [{"rfilename": p} for p in sorted(files)],
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
        })

    def tree(self, kinds, org, name, rev, path=None) -> int:
        repo = self._repo(org, name, kinds)
        sha, files = self._revision(repo, rev)
        recursive = (self.query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        base = (path or "").strip("/")
        prefix = base + "/" if base else ""
        out, dirs = [], set()
        for p in sorted(files):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                d = prefix + "/".join(parts[:i])
                if (recursive or i == 1) and d not in dirs:
                    dirs.add(d)
                    out.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "path": d})
            if recursive or len(parts) == 1:
                out.append(files[p].tree_json(p))
        if base and not out:
            raise HubError(404, f"{base} does not exist on {rev}", "EntryNotFound", {"X-Repo-Commit": sha})
        return self._send_json(out)


class _UploadEndpoints(_Plumbing):
    """A push: preupload, the LFS batch API and its PUTs, NDJSON commits, the card's YAML check."""

    def preupload(self, org, name, rev) -> int:
        self._require_write()
        repo = self._repo(org, name)
        _, files = self._revision(repo, rev)
        answer = []
        for f in self._json_body().get("files", []):
            lfs = self.hub.lfs_threshold is not None and f["size"] >= self.hub.lfs_threshold
            existing = files.get(f["path"])
            oid = None
            if existing is not None:
                oid = existing.sha256 if lfs else (None if existing.sha256 else existing.oid)
            answer.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return self._send_json({"files": answer, "commitOid": repo.refs["main"]})

    def lfs_batch(self, org, name) -> int:
        self._require_write()
        self._repo(org, name)
        body = self._json_body()
        objects = []
        for obj in body.get("objects", []):
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs:
                ticket = secrets.token_hex(8)
                self.hub.upload_tickets[ticket] = obj["oid"]
                item["actions"] = {"upload": {"href": f"{self.hub.endpoint}/lfs-upload/{ticket}", "header": {}}}
            objects.append(item)
        return self._send_json({"transfer": "basic", "objects": objects})

    def lfs_put(self, ticket) -> int:
        sha = self.hub.upload_tickets.pop(ticket, None)
        if sha is None or hashlib.sha256(self.body).hexdigest() != sha:
            raise HubError(400, "unknown upload or content does not match its oid")
        with self.hub.lock:
            self.hub.lfs[sha] = self.body
        return self._send(200)

    def commit(self, org, name, rev) -> int:
        self._require_write()
        repo = self._repo(org, name)
        if rev not in repo.refs:
            raise HubError(400, f"can only commit to a branch, not {rev}")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        with self.hub.lock:
            hook = self.hub.before_commit.pop(0) if self.hub.before_commit else None
        if hook:
            hook()  # unlocked: it may well talk HTTP to this server itself
        with self.hub.lock:
            files = dict(repo.commits[repo.refs[rev]])
            message = ""
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    message = value.get("summary", "")
                    parent = value.get("parentCommit")
                    # The Hub takes a full sha or a prefix of at least 7 digits.
                    if parent and not (len(parent) >= 7 and repo.refs[rev].startswith(parent)):
                        raise HubError(412, "A commit has happened since. Please refresh and try again.")
                elif key == "file":
                    files[value["path"]] = self.hub._store(base64.b64decode(value["content"]), False)
                elif key == "lfsFile":
                    data = self.hub.lfs.get(value["oid"])
                    if data is None:
                        raise HubError(400, f"LFS object {value['oid']} was never uploaded")
                    files[value["path"]] = self.hub._store(data, True)
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    files = {p: e for p, e in files.items() if not p.startswith(folder)}
                else:
                    raise HubError(400, f"unknown commit operation {key}")
            sha = self.hub._commit(repo, rev, files, message)
        return self._send_json({
            "success": True, "commitOid": sha,
            "commitUrl": f"{self.hub.endpoint}/datasets/{repo.repo_id}/commit/{sha}",
        })

    def validate_yaml(self) -> int:
        """The Hub's check of a README's metadata, which the client runs before committing one."""
        body = self._json_body()
        content = body.get("content")
        if not isinstance(content, str):
            raise HubError(400, "content must be a string", body={"errors": [{"message": "content must be a string"}]})
        m = re.match(r"^\s*---\r?\n([\s\S]*?)\r?\n---[ \t]*(?:\r?\n|$)", content)
        try:
            meta = yaml.safe_load(m.group(1)) if m else None
        except yaml.YAMLError as e:
            message = f"Invalid YAML: {str(e).splitlines()[0]}"
            raise HubError(400, message, body={"errors": [{"message": message}]}) from None
        if not meta:
            return self._send_json({"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        errors = []
        if not isinstance(meta, dict):
            errors.append("metadata must be a mapping")
        else:
            if "pretty_name" in meta and not isinstance(meta["pretty_name"], str):
                errors.append('"pretty_name" must be a string')
            if "viewer" in meta and not isinstance(meta["viewer"], bool):
                errors.append('"viewer" must be a boolean')
            tags = meta.get("tags")
            if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
                errors.append('"tags" must be an array of strings')
        if errors:
            raise HubError(400, "Invalid metadata", body={"errors": [{"message": e} for e in errors]})
        return self._send_json({"errors": [], "warnings": []})


class _DownloadEndpoints(_Plumbing):
    """``resolve`` downloads (HEAD and GET, with Range) and the model weights' CDN."""

    def resolve(self, kinds, org, name, rev, path) -> int:
        repo = self._repo(org, name, kinds)
        sha, files = self._revision(repo, rev)
        entry = files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry.oid}"', "Accept-Ranges": "bytes"}
        if entry.sha256:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
            if repo.kind == "model":
                location = f"{self.hub.cdn_endpoint}/lfs-cdn/{entry.sha256}/{repo.repo_id}/{path}"
                return self._send(302, b"", {**headers, "Location": location})
        return self._send_content(repo, path, self.hub.content(entry), headers)

    def cdn(self, sha256, org, name, path) -> int:
        """The LFS storage a model's weights are redirected to: no Hub headers, no token needed."""
        data = self.hub.lfs.get(sha256)
        repo = self.hub.models.get(f"{org}/{name}")
        if data is None or repo is None:
            raise HubError(404, "NoSuchKey")
        return self._send_content(repo, path, data, {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"})

    def _send_content(self, repo: Repo, path: str, data: bytes, headers: dict) -> int:
        status, start, body = 200, 0, data
        rng = self.headers.get("Range")
        m = re.match(r"^bytes=(\d+)-(\d*)$", rng or "")
        if m:
            start = int(m.group(1))
            stop = int(m.group(2)) + 1 if m.group(2) else len(data)
            if start >= len(data) and len(data):
                raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            body = data[start:stop]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
        if self.command == "HEAD":
            return self._send(status, body, headers)
        with self.hub.lock:
            cut = self.hub.drop_at.get(path)
        sent = body if cut is None else body[:max(cut - start, 0)]
        self.send_response(status)
        for k, v in {"Content-Type": "application/octet-stream", **headers, "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(sent)
        complete = len(sent) == len(body)
        if not complete:
            # The promised Content-Length is never reached: the client sees
            # the peer close mid-body, as on a dropped connection.
            self.wfile.flush()
            self.close_connection = True
        with self.hub.lock:
            self.hub.sent.append(Sent(repo.kind, repo.repo_id, path, start, len(sent), complete))
        return status


def _handler_for(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_RepoEndpoints, _UploadEndpoints, _DownloadEndpoints), {"hub": hub})

"""A small Hugging Face Hub-compatible HTTP server for tests (stdlib only, threaded, in memory).

Point the real ``huggingface_hub`` client at it with ``HF_ENDPOINT=http://127.0.0.1:<port>`` (and, in a process
that already imported huggingface_hub, ``huggingface_hub.constants.ENDPOINT``; see ``tests/conftest.py``).
What works through it, unmodified: ``create_repo``/``delete_repo``, ``upload_file``/``upload_folder``/
``create_commit`` (additions, deletions, copies of regular files), ``delete_file``, ``repo_info``/``model_info``,
``list_repo_files``/``list_repo_tree``, ``get_paths_info``, ``file_exists``/``repo_exists``/``revision_exists``,
``list_repo_refs``/``list_repo_commits``, ``hf_hub_download``/``snapshot_download`` and therefore transformers'
``from_pretrained(repo_id)`` / ``push_to_hub``.

Endpoints (``{type}`` is ``models``, ``datasets`` or ``spaces``; repo ids are ``name`` or ``namespace/name``;
revisions are branch names or commit shas, URL-quoted):

* ``POST /api/repos/create`` (409 when it exists), ``DELETE /api/repos/delete``
* ``GET  /api/whoami-v2``, ``POST /api/validate-yaml`` (always valid), ``GET /api/agent-harnesses`` (an empty
  registry; huggingface_hub fetches it for its user-agent)
* ``GET  /api/{type}/{repo_id}[/revision/{rev}]``: ``id``, ``sha``, ``private``, ``lastModified``, ``siblings``
* ``GET  /api/{type}/{repo_id}/tree/{rev}[/{path}]`` (``recursive``), ``POST .../paths-info/{rev}``
* ``POST /api/{type}/{repo_id}/preupload/{rev}``: every file is ``uploadMode: "regular"`` (never LFS / Xet), with
  the git blob sha1 of the current remote file as ``oid`` (the client skips unchanged files)
* ``POST /api/{type}/{repo_id}/commit/{rev}``: ndjson (``header``, ``file`` base64, ``deletedFile``,
  ``deletedFolder``); ``lfsFile`` is refused with 400 since no LFS storage exists here
* ``GET  /api/{type}/{repo_id}/refs``, ``GET .../commits/{rev}``
* ``HEAD|GET /{repo_id}/resolve/{rev}/{path}`` (``/datasets/...``, ``/spaces/...`` prefixes too): 200 with
  ``ETag`` (git blob sha1), ``X-Repo-Commit``, ``Content-Length``; 404 with ``X-Error-Code`` ``RepoNotFound``,
  ``RevisionNotFound`` or ``EntryNotFound``. ``Range`` is ignored (a full 200 answer, which the client accepts).

Every commit gets a new sha; old commits stay readable by sha. A new repo starts with a ``.gitattributes`` commit, as
on the Hub. Only the default-branch flow is modelled: no pull requests (``create_pr`` is refused with 400), no
branch creation, no LFS/Xet storage.

Xet: the server never sends ``X-Xet-Hash`` headers and never answers ``uploadMode: "lfs"``, so neither downloads
nor uploads touch Xet/LFS storage even with ``hf_xet`` installed (``upload_folder`` then takes hf_xet's pipelined
path but only commits regular files). ``HF_HUB_DISABLE_XET=1`` is not required; the conftest helper sets it anyway
so the legacy single-commit path is exercised the same way on every machine.

Tokens are not checked: every request is recorded in ``server.hub.requests`` as ``(method, path, had_auth)``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space")
API_ACTIONS = ("revision", "tree", "paths-info", "preupload", "commit", "refs", "commits")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub reports as ``oid`` / ETag of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


@dataclass
class Commit:
    sha: str
    parent: Optional[str]
    title: str
    message: str
    date: str
    files: Dict[str, bytes]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: Dict[str, str] = field(default_factory=dict)
    commits: Dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Optional[Commit]:
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)


class HubState:
    """All repositories, in memory. Thread-safe through one lock."""

    def __init__(self):
        self.lock = threading.RLock()
        self.repos: Dict[Tuple[str, str], Repo] = {}
        self.requests: List[Tuple[str, str, bool]] = []
        self._counter = 0

    def new_sha(self, seed: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{seed}:{self._counter}:{time.time_ns()}".encode()).hexdigest()

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Optional[Repo]:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                return None
            repo = Repo(repo_type, repo_id, private, _now_iso())
            self.repos[(repo_type, repo_id)] = repo
            self.commit(repo, "main", "initial commit", "", {".gitattributes": GITATTRIBUTES})
            return repo

    def commit(self, repo: Repo, branch: str, title: str, message: str, files: Dict[str, bytes]) -> Commit:
        with self.lock:
            sha = self.new_sha(f"{repo.repo_id}:{title}")
            c = Commit(sha, repo.branches.get(branch), title, message, _now_iso(), files)
            repo.commits[sha] = c
            repo.branches[branch] = sha
            return c

    # convenience for tests ------------------------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> Dict[str, bytes]:
        with self.lock:
            return dict(self.repos[(repo_type, repo_id)].resolve(revision).files)


def _listing(files: Dict[str, bytes], prefix: str, recursive: bool):
    """Tree entries under folder ``prefix`` ('' = root): files, and folders (all levels when recursive)."""
    base = prefix.rstrip("/") + "/" if prefix else ""
    out_files, folders = [], set()
    for path in sorted(files):
        if not path.startswith(base):
            continue
        rest = path[len(base):]
        parts = rest.split("/")
        for i in range(1, len(parts)):
            if recursive or i == 1:
                folders.add(base + "/".join(parts[:i]))
        if recursive or len(parts) == 1:
            out_files.append(path)
    entries = [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0}
               for d in sorted(folders)]
    entries += [_file_entry(p, files[p]) for p in out_files]
    return entries


def _file_entry(path: str, data: bytes) -> dict:
    return {"type": "file", "path": path, "oid": git_blob_sha1(data), "size": len(data)}


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ssmvl-test-hub/0.1"

    @property
    def hub(self) -> HubState:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format, *args):  # quiet
        pass

    # -- plumbing ------------------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: Optional[dict] = None, head: bool = False):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: Optional[dict] = None, head: bool = False):
        self._send(status, json.dumps(obj).encode(), headers=headers, head=head)

    def _error(self, status: int, message: str, code: Optional[str] = None, head: bool = False):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers=headers, head=head)

    def _base_url(self) -> str:
        return f"http://{self.headers.get('Host') or '%s:%d' % self.server.server_address[:2]}"

    def _dispatch(self, method: str):
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        segs = [s for s in split.path.split("/") if s != ""]
        with self.hub.lock:
            self.hub.requests.append((method, split.path, bool(self.headers.get("Authorization"))))
        try:
            if segs[:1] == ["api"]:
                return self._api(method, segs[1:])
            return self._resolve(method, segs)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as err:  # report server bugs to the client instead of hanging it
            self._error(500, f"{type(err).__name__}: {err}")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PUT(self):
        self._dispatch("PUT")

    # -- repo lookup -------------------------------------------------------------------------------------------------
    def _split_repo(self, repo_type: str, segs: List[str], markers) -> Tuple[str, List[str]]:
        """(repo_id, rest) from path segments: a known 2-segment repo first, then a 1-segment one."""
        segs = [unquote(s) for s in segs]
        with self.hub.lock:
            for n in (2, 1):
                if len(segs) >= n and (repo_type, "/".join(segs[:n])) in self.hub.repos:
                    return "/".join(segs[:n]), segs[n:]
        # unknown repo: guess the split from where the action keyword sits
        if len(segs) >= 2 and segs[1] in markers and not (len(segs) >= 3 and segs[2] in markers):
            return segs[0], segs[1:]
        return "/".join(segs[:2]), segs[2:]

    def _repo(self, repo_type: str, repo_id: str, head: bool = False) -> Optional[Repo]:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, f"Repository {repo_id} not found", "RepoNotFound", head=head)
        return repo

    def _commit_at(self, repo: Repo, revision: str, head: bool = False) -> Optional[Commit]:
        c = repo.resolve(revision)
        if c is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
        return c

    # -- /{repo_id}/resolve/{rev}/{path} -----------------------------------------------------------------------------
    def _resolve(self, method: str, segs: List[str]):
        if method not in ("GET", "HEAD"):
            return self._error(405, "method not allowed")
        head = method == "HEAD"
        repo_type = "model"
        if segs and segs[0] in ("datasets", "spaces"):
            repo_type, segs = segs[0][:-1], segs[1:]
        repo_id, rest = self._split_repo(repo_type, segs, ("resolve",))
        if len(rest) < 3 or rest[0] != "resolve":
            return self._error(404, "not found", head=head)
        revision, filename = rest[1], "/".join(rest[2:])
        with self.hub.lock:
            repo = self._repo(repo_type, repo_id, head)
            if repo is None:
                return
            c = self._commit_at(repo, revision, head)
            if c is None:
                return
            data = c.files.get(filename)
        if data is None:
            return self._error(404, f"Entry not found: {filename}", "EntryNotFound", head=head)
        etag = git_blob_sha1(data)
        self._send(200, data, content_type="application/octet-stream", head=head,
                   headers={"ETag": f'"{etag}"', "X-Repo-Commit": c.sha, "Accept-Ranges": "none"})

    # -- /api/... ----------------------------------------------------------------------------------------------------
    def _api(self, method: str, segs: List[str]):
        if segs == ["whoami-v2"]:
            return self._json(200, {"type": "user", "name": "test-user", "fullname": "Test User", "orgs": [],
                                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if segs == ["agent-harnesses"]:  # huggingface_hub's user-agent registry: an empty one
            return self._json(200, {"standardEnvVars": [], "harnesses": {}})
        if segs == ["validate-yaml"] and method == "POST":
            self._body()
            return self._json(200, {"errors": [], "warnings": []})
        if segs[:1] == ["repos"] and len(segs) == 2:
            return self._repos_crud(method, segs[1])
        if not segs or segs[0] not in ("models", "datasets", "spaces"):
            return self._error(404, f"unknown endpoint /api/{'/'.join(segs)}")
        repo_type = segs[0][:-1]
        repo_id, rest = self._split_repo(repo_type, segs[1:], API_ACTIONS)
        action = rest[0] if rest else "revision"
        revision = rest[1] if len(rest) > 1 else "main"
        head = method == "HEAD"
        body = self._body() if method in ("POST", "PUT", "DELETE") else b""
        with self.hub.lock:
            repo = self._repo(repo_type, repo_id, head)
            if repo is None:
                return
            if action == "refs":
                return self._json(200, {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s}
                                                     for b, s in repo.branches.items()],
                                        "converts": [], "tags": []})
            if action == "commit" and method == "POST":
                return self._commit(repo, revision, body)
            c = self._commit_at(repo, revision, head)
            if c is None:
                return
            if action == "revision":
                return self._info(repo, c, head)
            if action == "tree":
                path = "/".join(rest[2:])
                if path and path in c.files:
                    return self._json(200, [_file_entry(path, c.files[path])])
                entries = _listing(c.files, path, self.query.get("recursive", "false").lower() in ("1", "true"))
                if path and not entries:
                    return self._error(404, f"{path} does not exist on {revision}", "EntryNotFound")
                return self._json(200, entries)
            if action == "paths-info":
                return self._paths_info(c, body)
            if action == "preupload":
                payload = json.loads(body or b"{}")
                files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": git_blob_sha1(c.files[f["path"]]) if f["path"] in c.files else None}
                         for f in payload.get("files", [])]
                return self._json(200, {"files": files, "commitOid": c.sha})
            if action == "commits":
                out, sha = [], c.sha
                while sha is not None:
                    cc = repo.commits[sha]
                    out.append({"id": cc.sha, "title": cc.title, "message": cc.message, "date": cc.date,
                                "authors": [{"user": "test-user"}]})
                    sha = cc.parent
                return self._json(200, out)
        return self._error(404, f"unknown endpoint /api/{'/'.join(segs)}")

    def _repos_crud(self, method: str, verb: str):
        payload = json.loads(self._body() or b"{}")
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            return self._error(400, f"invalid repo type {repo_type}")
        name, org = payload.get("name"), payload.get("organization")
        if not name:
            return self._error(400, "missing name")
        repo_id = f"{org}/{name}" if org else name
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        if verb == "create" and method == "POST":
            private = bool(payload.get("private")) or payload.get("visibility") == "private"
            if self.hub.create_repo(repo_type, repo_id, private) is None:
                return self._json(
                    409, {"error": "You already created this repo", "url": f"{self._base_url()}/{prefix}{repo_id}"},
                    headers={"X-Error-Message": "You already created this repo"})
            return self._json(200, {"url": f"{self._base_url()}/{prefix}{repo_id}", "name": repo_id})
        if verb == "delete" and method == "DELETE":
            with self.hub.lock:
                if self.hub.repos.pop((repo_type, repo_id), None) is None:
                    return self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
            return self._json(200, {})
        return self._error(404, f"unknown endpoint /api/repos/{verb}")

    def _info(self, repo: Repo, c: Commit, head: bool):
        author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        blobs = self.query.get("blobs", "false").lower() in ("1", "true")
        siblings = [dict({"rfilename": p}, **({"size": len(d), "blobId": git_blob_sha1(d)} if blobs else {}))
                    for p, d in sorted(c.files.items())]
        info = {"_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "author": author, "sha": c.sha, "private": repo.private, "gated": False, "disabled": False,
                "lastModified": c.date, "createdAt": repo.created_at, "tags": [], "downloads": 0, "likes": 0,
                "siblings": siblings}
        self._json(200, info, head=head)

    def _paths_info(self, c: Commit, body: bytes):
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        out = []
        for p in paths:
            p = p.strip("/")
            if p in c.files:
                out.append(_file_entry(p, c.files[p]))
            elif any(f.startswith(p + "/") for f in c.files):
                out.append({"type": "directory", "path": p, "oid": hashlib.sha1(p.encode()).hexdigest()})
        self._json(200, out)

    def _commit(self, repo: Repo, revision: str, body: bytes):
        if self.query.get("create_pr") in ("1", "true", "True"):
            return self._error(400, "pull requests are not supported by the test hub")
        if revision not in repo.branches:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        files = dict(repo.commits[repo.branches[revision]].files)
        header = {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
                parent = value.get("parentCommit")
                if parent and parent != repo.branches[revision]:
                    return self._error(412, "parentCommit is not the head of the branch")
            elif key == "file":
                content = value.get("content", "")
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                files[value["path"]] = data
            elif key == "deletedFile":
                if value["path"] not in files:
                    return self._error(404, f"A file with this name doesn't exist: {value['path']}",
                                       "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                gone = [p for p in files if p.startswith(prefix)]
                if not gone:
                    return self._error(404, f"A file with this name doesn't exist: {value['path']}",
                                       "EntryNotFound")
                for p in gone:
                    del files[p]
            elif key == "lfsFile":
                return self._error(400, "LFS uploads are not supported by the test hub (preupload answers "
                                        "uploadMode 'regular' for every file)")
            else:
                return self._error(400, f"unknown commit operation {key!r}")
        c = self.hub.commit(repo, revision, header.get("summary") or "commit", header.get("description", ""), files)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._json(200, {"success": True, "commitOid": c.sha,
                         "commitUrl": f"{self._base_url()}/{prefix}{repo.repo_id}/commit/{c.sha}",
                         "hookOutput": "", "pullRequestUrl": None})


class HubServer:
    """``with HubServer() as hub: hub.url`` — a running server on 127.0.0.1 (free port unless given)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.httpd = ThreadingHTTPServer((host, port), HubHandler)
        self.httpd.daemon_threads = True
        self.httpd.hub = HubState()  # type: ignore[attr-defined]
        self.thread: Optional[threading.Thread] = None

    @property
    def hub(self) -> HubState:
        return self.httpd.hub  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="test-hub", daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":  # manual use: python tests/hub_server.py [port]
    import sys

    srv = HubServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
    print(f"HF_ENDPOINT={srv.url}", flush=True)
    try:
        srv.thread.join()
    except KeyboardInterrupt:
        srv.stop()

"""Push / pull through the real huggingface_hub client against the local Hub endpoint (tests/hub_server.py).

The push -> fresh-process load test runs for a tiny transformers GPT-2 and a tiny ssmvl Mamba LM (remote code: the
fresh process cannot import ``ssmvl``, it loads the modeling files pushed next to the weights). The other tests use
the GPT-2 (``make_model``).
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import yaml

from ssmvl.conversion import hub
from ssmvl.conversion.model_card import count_parameters, render_model_card

sys.path.insert(0, os.path.dirname(__file__))
from conftest import hub_env_vars  # noqa: E402
from isolated import run_isolated  # noqa: E402

SECRET = "hf_ssmvlTestTokenThatMustNeverBePrinted"


def make_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32)).eval()


@pytest.fixture(scope="module")
def model_and_ids():
    model = make_model()
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    return model, ids


@pytest.fixture
def model_dir(tmp_path, model_and_ids):
    out = tmp_path / "model"
    model_and_ids[0].save_pretrained(out)
    return out


def front_matter(card: str) -> dict:
    assert card.startswith("---\n"), card[:200]
    return yaml.safe_load(card.split("---\n")[1])


# ---------------------------------------------------------------------------------------------------------------------
# (a) push, then load in a fresh process (no ssmvl importable, empty cache) and compare logits
# ---------------------------------------------------------------------------------------------------------------------
def make_mamba_lm():
    from ssmvl.modeling.configuration_mamba_lm import MambaLMConfig
    from ssmvl.modeling.modeling_mamba_lm import MambaLMForCausalLM

    torch.manual_seed(0)
    return MambaLMForCausalLM(MambaLMConfig(vocab_size=50, hidden_size=16, state_size=4, num_hidden_layers=2)).eval()


@pytest.mark.parametrize("family", ["gpt2", "mamba_lm"])
def test_push_then_from_pretrained_in_fresh_process(hub_env, model_and_ids, tmp_path, capsys, family):
    model, ids = model_and_ids
    if family == "mamba_lm":
        model = make_mamba_lm()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    repo = f"ssmvl-test/tiny-{family}"
    url = hub.push_folder(model_dir, repo, token=SECRET)
    assert url == f"{hub_env['endpoint']}/{repo}"
    server_files = set(hub_server_files(hub_env, repo))
    assert {"config.json", "model.safetensors", "README.md", ".gitattributes"} <= server_files
    if family == "mamba_lm":
        assert {p.name for p in model_dir.glob("*.py")} <= server_files  # the remote code went up too

    work = tmp_path / "fresh"
    work.mkdir()
    with torch.no_grad():
        expected = model(ids).logits
    torch.save({"ids": ids, "logits": expected}, work / "expected.pt")
    env = hub_env_vars(hub_env["endpoint"], tmp_path / "fresh_home")
    proc = run_isolated("""
        import torch
        from transformers import AutoModelForCausalLM
        ref = torch.load("expected.pt", weights_only=True)
        model = AutoModelForCausalLM.from_pretrained(REPO, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(ref["ids"]).logits
        print("MAXDIFF", (logits - ref["logits"]).abs().max().item())
    """.replace("REPO", repr(repo)), cwd=work, env_extra=env, timeout=120)
    diff = float(proc.stdout.split("MAXDIFF")[1].split()[0])
    assert diff < 1e-5, proc.stdout
    assert (tmp_path / "fresh_home" / "hub").is_dir()  # it really downloaded into the fresh cache
    assert SECRET not in capsys.readouterr().out


def hub_server_files(hub_env, repo_id):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_env["endpoint"]).list_repo_files(repo_id)


# ---------------------------------------------------------------------------------------------------------------------
# (b) files the push did not write survive; changed files are updated; README on the folder is kept
# ---------------------------------------------------------------------------------------------------------------------
def test_second_push_keeps_foreign_files(hub_env, model_dir, hub_server):
    from huggingface_hub import HfApi

    repo = "ssmvl-test/keep-files"
    hub.push_folder(model_dir, repo)
    api = HfApi()
    api.upload_file(path_or_fileobj=b'{"accuracy": 0.5}', path_in_repo="eval/results.json", repo_id=repo,
                    commit_message="someone else's file")
    before = api.model_info(repo).sha

    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["ssmvl_marker"] = 1
    (model_dir / "config.json").write_text(json.dumps(cfg))
    (model_dir / "README.md").write_text("---\nlicense: mit\n---\n# hand-written card\n")
    hub.push_folder(model_dir, repo, commit_message="second push")

    info = api.model_info(repo)
    assert info.sha != before
    files = hub_server.hub.files(repo)
    assert files["eval/results.json"] == b'{"accuracy": 0.5}'
    assert json.loads(files["config.json"])["ssmvl_marker"] == 1
    assert files["README.md"].startswith(b"---\nlicense: mit")  # an existing card is never replaced
    assert [c.title for c in api.list_repo_commits(repo)][0] == "second push"

    local = hub.pull(repo, local_dir=str(model_dir.parent / "pulled"))
    assert sorted(p for p in os.listdir(local) if not p.startswith(".")) == sorted(
        p for p in ["README.md", "config.json", "eval", "generation_config.json", "model.safetensors"]
        if p == "eval" or p in files)


def test_push_with_xet_enabled_uses_regular_uploads(hub_env, model_dir, monkeypatch):
    """The default client path when hf_xet is installed (pipelined upload) also works: the server never asks for
    LFS/Xet, so HF_HUB_DISABLE_XET is not needed by users of the test endpoint."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    monkeypatch.delenv("HF_HUB_DISABLE_XET")
    hub.push_folder(model_dir, "ssmvl-test/xet-path")
    assert "model.safetensors" in hub_server_files(hub_env, "ssmvl-test/xet-path")


# ---------------------------------------------------------------------------------------------------------------------
# (c) the model card
# ---------------------------------------------------------------------------------------------------------------------
def test_card_auto_class_and_parameter_count(hub_env, model_dir, model_and_ids, hub_server):
    model = model_and_ids[0]
    n = model.num_parameters()
    assert count_parameters(model_dir) == n
    hub.push_folder(model_dir, "ssmvl-test/card", card_kwargs=dict(
        license="apache-2.0", base_model="state-spaces/mamba-130m-hf", datasets=["wikitext"],
        metrics={"perplexity": 12.5}, metrics_split="test", parity={"max_abs_diff": 1.2e-6, "passed": True},
        source="transformers", notes=["tiny test model"]))
    card = hub_server.hub.files("ssmvl-test/card")["README.md"].decode()
    assert card == (model_dir / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["license"] == "apache-2.0"
    assert {"ssmvl", "mamba", "custom_code"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["base_model"] == "state-spaces/mamba-130m-hf" and meta["datasets"] == ["wikitext"]
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"][0] == {"type": "perplexity", "value": 12.5, "name": "perplexity"}
    assert result["dataset"]["split"] == "test"
    assert 'AutoModelForCausalLM.from_pretrained("ssmvl-test/card", trust_remote_code=True)' in card
    assert f"{n:,}" in card
    assert "max_abs_diff" in card and "1.200e-06" in card and "tiny test model" in card
    assert "$" not in card.split("```python")[0]  # every template field was filled

    from huggingface_hub import ModelCard

    assert ModelCard(card).data.library_name == "transformers"


def test_card_auto_class_per_architecture(tmp_path):
    cases = {"VimForImageClassification": ("AutoModelForImageClassification", "image-classification"),
             "MambaLMForCausalLM": ("AutoModelForCausalLM", "text-generation"),
             "SsmVlmForConditionalGeneration": ("AutoModelForImageTextToText", "image-text-to-text"),
             "VMambaModel": ("AutoModel", "feature-extraction")}
    for arch, (auto, tag) in cases.items():
        d = tmp_path / arch
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "ssmvl_x", "architectures": [arch],
                                                   "hidden_size": 8}))
        card = render_model_card(str(d), repo_id="me/x")
        assert f'{auto}.from_pretrained("me/x", trust_remote_code=True)' in card, arch
        assert front_matter(card)["pipeline_tag"] == tag
        assert "parameters | unknown" in card
    # config object instead of a folder (how a converter may call it before saving)
    from transformers import GPT2Config

    card = render_model_card(config=GPT2Config(n_layer=1, architectures=["GPT2LMHeadModel"]), family="demo")
    assert "AutoModelForCausalLM.from_pretrained" in card and "demo" in front_matter(card)["tags"]


# ---------------------------------------------------------------------------------------------------------------------
# (d) bad inputs, CLI
# ---------------------------------------------------------------------------------------------------------------------
def test_bad_inputs(hub_env, tmp_path, capsys):
    missing = tmp_path / "nope"
    with pytest.raises(hub.PushError, match="does not exist") as err:
        hub.push_folder(missing, "ssmvl-test/bad")
    assert str(missing) in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "weights.bin").write_bytes(b"x")
    with pytest.raises(hub.PushError, match="config.json") as err:
        hub.push_folder(empty, "ssmvl-test/bad")
    assert str(empty) in str(err.value)
    assert not (empty / "README.md").exists()
    assert hub.main_push([str(empty), "ssmvl-test/bad"]) == 2
    assert str(empty) in capsys.readouterr().err


def test_main_push_prints_url_not_token(hub_env, model_dir, hub_server, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    n_before = len(hub_server.hub.requests)
    assert hub.main_push([str(model_dir), "ssmvl-test/cli", "--private", "--message", "from the cli"]) == 0
    out, errout = capsys.readouterr()
    assert out.strip() == f"{hub_env['endpoint']}/ssmvl-test/cli"
    assert SECRET not in out + errout
    sent = hub_server.hub.requests[n_before:]
    assert sent and all(had_auth for _, _, had_auth in sent)  # the env token was used
    assert hub_server.hub.repos[("model", "ssmvl-test/cli")].private


def test_server_api_surface(hub_env, hub_server):
    """The endpoints push/pull rely on, driven through the real client."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    api, repo = HfApi(), "ssmvl-test/api"
    api.create_repo(repo)
    api.create_repo(repo, exist_ok=True)
    api.create_commit(repo, [CommitOperationAdd("a/b.txt", b"one"), CommitOperationAdd("c.txt", b"two")],
                      commit_message="add")
    assert api.list_repo_files(repo) == [".gitattributes", "a/b.txt", "c.txt"]
    assert api.file_exists(repo, "a/b.txt") and not api.file_exists(repo, "zz")
    assert {p.path for p in api.get_paths_info(repo, ["a", "c.txt", "missing"])} == {"a", "c.txt"}
    sha = api.model_info(repo).sha
    api.delete_file("c.txt", repo)
    api.create_commit(repo, [CommitOperationDelete("a/")], commit_message="rm folder")
    assert api.list_repo_files(repo) == [".gitattributes"]
    assert open(hf_hub_download(repo, "c.txt", revision=sha)).read() == "two"  # old commits stay readable
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "c.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, ".gitattributes", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("ssmvl-test/absent")


def test_transformers_push_to_hub_and_from_pretrained(hub_env, model_and_ids):
    from transformers import AutoModelForCausalLM

    model, ids = model_and_ids
    model.push_to_hub("ssmvl-test/tf-push", commit_message="push_to_hub")
    loaded = AutoModelForCausalLM.from_pretrained("ssmvl-test/tf-push").eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)

"""Zero-shot evaluation: lm-eval's prompt formats on real items, the batched scorer against a slow
reference loop, subsets, errors, the hub path (faked), the CLI, the objective in a tiny study, and
agreement with lm-evaluation-harness itself when it is installed."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
import torch.nn.functional as F

from automl_prune.cli import main
from automl_prune.errors import UserError
from automl_prune.evaluation.zeroshot import TASK_NAMES, ZeroShotSuite, evaluate_zero_shot, load_docs, parse_tasks
from automl_prune.evaluation.zeroshot import scoring
from automl_prune.evaluation.zeroshot.scoring import encode_pair, loglikelihoods
from automl_prune.evaluation.zeroshot.tasks import (TASKS, format_docs, hellaswag_preprocess, split_hellaswag_ctx)

HAS_LM_EVAL = importlib.util.find_spec("lm_eval") is not None


def _first_item(task, data_dir):
    docs, info = load_docs(task, data_dir=data_dir, limit=1)
    assert info["source"] == "local" and info["subset"] == "first 1"
    return format_docs(task, docs)[0]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(), AutoTokenizer.from_pretrained(tiny_llama_dir)


# ------------------------------------------------------------------------------------------- formats

def test_prompts_follow_lm_eval_on_the_first_real_item_of_each_task(data_dir):
    it = _first_item("piqa", data_dir)
    assert it.contexts == ["Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"] * 2
    assert it.continuations == [
        " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also "
        "need to supply it with a water bottle and a food dish.",
        " Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will also "
        "need to supply it with a water bottle and a food dish."]
    assert it.gold == 0 and it.choices == [c[1:] for c in it.continuations]  # acc_norm lengths exclude the delimiter

    it = _first_item("boolq", data_dir)
    assert it.contexts[0].startswith("Ethanol fuel -- All biomass goes through at least some of these steps")
    assert it.contexts[0].endswith("than producing gasoline.\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert it.continuations == [" no", " yes"] and it.gold == 0  # label "false"

    it = _first_item("arc_easy", data_dir)
    assert it.contexts[0] == ("Question: Which statement best explains why photosynthesis is the foundation of most "
                              "food webs?\nAnswer:")
    assert it.continuations == [" Sunlight is the source of energy for nearly all ecosystems.",
                                " Most ecosystems are found on land instead of in water.",
                                " Carbon dioxide is more available than other gases.",
                                " The producers in all ecosystems are plants."]
    assert it.gold == 0

    it = _first_item("arc_challenge", data_dir)
    assert it.contexts[0] == ("Question: An astronomer observes that a planet rotates faster after a meteorite impact. "
                              "Which is the most likely effect of this increase in rotation?\nAnswer:")
    assert it.continuations[2] == " Planetary days will become shorter." and it.gold == 2  # answerKey C

    it = _first_item("winogrande", data_dir)  # partial evaluation: the options fill the blank in the context
    assert it.contexts == ["Sarah was a much better surgeon than Maria so Sarah",
                           "Sarah was a much better surgeon than Maria so Maria"]
    assert it.continuations == [" always got the easier cases."] * 2 and it.gold == 1

    it = _first_item("hellaswag", data_dir)  # ctx_b "he" capitalised as lm-eval's process_docs does
    assert it.contexts[0] == "Roof shingle removal: A man is sitting on a roof. He"
    assert it.continuations == [" is using wrap to wrap a pair of skis.", " is ripping level tiles off.",
                                " is holding a rubik's cube.", " starts pulling up roofing on a roof."]
    assert it.gold == 3

    it = _first_item("lambada_openai", data_dir)
    assert it.contexts[0].startswith("In my palm is a clear stone, and inside it is a small ivory statuette.")
    assert it.contexts[0].endswith("his mouth curved in a confident grin, I don't care about")
    assert it.continuations == [" signs"] and it.gold == 0


def test_hellaswag_ctx_split_and_preprocess():
    assert split_hellaswag_ctx("A man is sitting on a roof. he") == ("A man is sitting on a roof.", "he")
    assert split_hellaswag_ctx("A lady walks. She bends down. the lady") == ("A lady walks. She bends down.", "the lady")
    assert split_hellaswag_ctx("How to buy a tv. Decide on the amount.") == ("How to buy a tv. Decide on the amount.", "")
    assert split_hellaswag_ctx("people") == ("", "people")
    # lm-eval strips before removing the brackets: the space before "[header]" stays
    assert hellaswag_preprocess(" [header] How to x [title] Do y. [step] See [www.a.org] now.  ") == " How to x. Do y. See now."


def test_every_task_formats_its_first_documents(data_dir):
    for task in TASK_NAMES:
        docs, info = load_docs(task, data_dir=data_dir, limit=5)
        items = format_docs(task, docs)
        assert len(items) == 5 and info["documents_available"] > 1000
        for it in items:
            assert len(it.contexts) == len(it.continuations) == len(it.choices) and 0 <= it.gold < len(it.contexts)
            assert all(c.startswith(" ") for c in it.continuations)


# ------------------------------------------------------------------------------------------- scorer

def test_encode_pair_moves_trailing_spaces_to_the_continuation(tiny):
    _, tok = tiny
    assert encode_pair(tok, "Answer: ", "yes") == encode_pair(tok, "Answer:", " yes")
    ctx, cont = encode_pair(tok, "Question: why?\nAnswer:", " because")
    assert ctx + cont == tok.encode("Question: why?\nAnswer: because") and cont
    assert encode_pair(tok, "", " hello")[0] == [scoring.prefix_token_id(tok)]


@torch.no_grad()
def _reference(model, requests):
    """One request at a time, full logits, no batching or padding."""
    out = []
    for ctx, cont in requests:
        ids = torch.tensor([ctx + cont])
        logp = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
        target = torch.tensor(cont)
        out.append((float(logp[pos, target].sum()), bool((logp[pos].argmax(-1) == target).all())))
    return out


def test_batched_scorer_equals_an_unbatched_reference_loop(tiny, data_dir, monkeypatch):
    model, tok = tiny
    suite = ZeroShotSuite("piqa,boolq,arc_challenge,winogrande,lambada", tok, limit=6, data_dir=data_dir)
    requests = [r for t in suite.prepared.values() for r in t.requests]
    shared = len({tuple((c + x)[:-1]) for c, x in requests})
    assert shared < len(requests)  # BoolQ's " no" / " yes" share one input row
    ref = _reference(model, requests)
    for batch_size in (1, 5, 64):
        got = loglikelihoods(model, requests, batch_size=batch_size, progress=False)
        assert max(abs(a[0] - b[0]) for a, b in zip(got, ref)) < 1e-4
        assert [a[1] for a in got] == [b[1] for b in ref]
    monkeypatch.setattr(scoring, "_accepts_logits_to_keep", lambda m: False)  # full-logits path
    got = loglikelihoods(model, requests, batch_size=7, progress=False)
    assert max(abs(a[0] - b[0]) for a, b in zip(got, ref)) < 1e-4
    monkeypatch.undo()

    res = suite.evaluate(model, batch_size=4, progress=False)
    k = 0
    for name, task in suite.prepared.items():
        accs, norms, lls = [], [], []
        for it in task.items:
            chunk = ref[k : k + len(it.contexts)]
            k += len(it.contexts)
            scores = [ll for ll, _ in chunk]
            accs.append(scores.index(max(scores)) == it.gold)
            normed = [s / len(c) for s, c in zip(scores, it.choices)]
            norms.append(normed.index(max(normed)) == it.gold)
            lls.append(chunk[0][0])
            if name == "lambada_openai":
                accs[-1] = chunk[0][1]
        r = res["tasks"][name]
        assert r["n"] == 6 and r["acc"] == pytest.approx(sum(accs) / 6)
        if "acc_norm" in TASKS[name].metrics:
            assert r["acc_norm"] == pytest.approx(sum(norms) / 6)
        else:
            assert "acc_norm" not in r
        if name == "lambada_openai":
            assert r["ppl"] == pytest.approx(math.exp(-sum(lls) / 6), rel=1e-4)
    tasks = res["tasks"].values()
    assert res["average"]["acc"] == pytest.approx(sum(r["acc"] for r in tasks) / 5)
    assert res["average"]["acc_norm"] == pytest.approx(sum(r.get("acc_norm", r["acc"]) for r in tasks) / 5)


def test_left_truncation_to_the_model_length(tiny):
    model, tok = tiny
    ctx, cont = encode_pair(tok, "word " * 40 + "end", " of the line")
    got = loglikelihoods(model, [(ctx, cont)], max_length=12, progress=False)
    ref = _reference(model, [((ctx + cont)[-13:-len(cont)], cont)])
    assert got[0][0] == pytest.approx(ref[0][0], abs=1e-4)


# ------------------------------------------------------------------------------------------- subsets, errors, hub

def test_limit_takes_the_first_documents_and_is_deterministic(tiny, data_dir):
    model, tok = tiny
    all_docs, _ = load_docs("arc_easy", data_dir=data_dir)
    some, info = load_docs("arc_easy", data_dir=data_dir, limit=7)
    assert some == all_docs[:7] and info["documents_available"] == len(all_docs) == 2376
    a = evaluate_zero_shot(model, tok, ["arc_easy"], limit=7, data_dir=data_dir, progress=False)
    b = evaluate_zero_shot(model, tok, "arc_easy", limit=7, data_dir=data_dir, batch_size=3, progress=False)
    assert a["tasks"]["arc_easy"]["acc"] == b["tasks"]["arc_easy"]["acc"] and a["limit"] == 7
    json.dumps(a)  # JSON-serialisable


def test_task_names_aliases_and_errors(tmp_path, capsys):
    assert parse_tasks("lambada, PIQA,piqa") == ["lambada_openai", "piqa"]
    assert parse_tasks("all") == list(TASK_NAMES) and len(TASK_NAMES) == 7
    with pytest.raises(UserError, match="valid tasks: piqa, boolq, arc_easy, arc_challenge, winogrande, hellaswag"):
        parse_tasks("piqa,mmlu")
    with pytest.raises(UserError, match="limit"):
        evaluate_zero_shot(None, None, "piqa", limit=0)
    with pytest.raises(UserError, match="backend"):
        evaluate_zero_shot(None, None, "piqa", backend="vllm")
    with pytest.raises(UserError, match="missing zero-shot data file"):
        load_docs("piqa", data_dir=tmp_path)
    # the CLI rejects them before loading the model (a folder that passes the path checks, never loaded)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for args, expected in ((["--zero-shot", "piqa,nope"], "valid tasks"), (["--zero-shot", "piqa", "--zero-shot-limit", "0"], "limit"),
                           (["--backend", "lm-eval"], "add --zero-shot")):
        assert main(["eval", "--model", str(model), *args]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err


def test_lm_eval_backend_without_lm_eval_names_the_install(monkeypatch):
    from automl_prune.errors import MissingPackageError

    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)  # as if it were not installed
    with pytest.raises(MissingPackageError, match="pip install lm_eval"):
        evaluate_zero_shot(None, None, "piqa", backend="lm-eval")


def test_hub_path_loads_lm_evals_datasets_and_fails_in_one_line(data_dir, monkeypatch):
    import datasets

    monkeypatch.delenv("AUTOML_PRUNE_DATA_DIR", raising=False)
    calls = []

    def offline(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match="could not load 'allenai/ai2_arc:ARC-Easy'.*--data-dir"):
        load_docs("arc_easy", limit=3)
    assert calls == [("allenai/ai2_arc", "ARC-Easy", "test")]

    # a reachable hub: the same documents (in the hub schema) give the same requests as the local files
    for task in ("piqa", "hellaswag", "winogrande"):
        raw, _ = load_docs(task, data_dir=data_dir, limit=4, process=False)
        monkeypatch.setattr(datasets, "load_dataset", lambda *a, raw=raw, **k: datasets.Dataset.from_list(raw))
        hub_docs, info = load_docs(task, limit=4)
        local_docs, _ = load_docs(task, data_dir=data_dir, limit=4)
        assert info["source"] == "hub" and info["dataset"] == TASKS[task].hub[0]
        assert format_docs(task, hub_docs) == format_docs(task, local_docs)


# ------------------------------------------------------------------------------------------- CLI, objective

def test_cli_eval_zero_shot_writes_the_table_and_json(tiny_llama_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", str(tiny_llama_dir), "--device", "cpu", "--data-dir", str(data_dir),
                 "--zero-shot", "piqa,winogrande", "--zero-shot-limit", "8", "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "average (2 tasks)" in err and "piqa" in err and "winogrande" in err
    report = json.loads(out.read_text())
    zs = report["zero_shot"]
    assert report["results"] == {}  # no perplexity unless --data is given
    assert set(zs["tasks"]) == {"piqa", "winogrande"} and zs["backend"] == "builtin" and zs["limit"] == 8
    assert all(r["n"] == 8 and 0 <= r["acc"] <= 1 for r in zs["tasks"].values())
    assert "acc_norm" in zs["tasks"]["piqa"] and "acc_norm" not in zs["tasks"]["winogrande"]


def test_zero_shot_objective_parameters():
    from objectives import available, make_objective

    assert "zero_shot" in available()
    obj = make_objective("zero_shot", tasks="piqa,lambada", limit=4, metric="acc")
    assert obj.direction == "maximize" and obj.tasks == ("piqa", "lambada_openai")
    assert make_objective("zero_shot").tasks == tuple(TASK_NAMES)
    for params, field in ((dict(tasks=["nope"]), "tasks"), (dict(limit=0), "limit"), (dict(metric="f1"), "metric"),
                          (dict(batch_size=-1), "batch_size")):
        with pytest.raises(UserError, match=field):
            make_objective("zero_shot", **params)


def test_zero_shot_objective_in_a_tiny_study(tmp_path, tiny_llama_dir, data_dir):
    import optuna

    from automl_prune.search.study.config import load_config
    from automl_prune.search.run import run_search
    from study_configs import tiny_study_config

    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir,
                             objectives=[{"name": "zero_shot", "params": {"tasks": ["piqa", "arc_easy"], "limit": 4}}],
                             budget={"trials": 3}, final={"top": 0, "fidelity_sample": 0, "baselines": []})
    out = tmp_path / "run"
    run_search(load_config(path), out, progress=False, final=False)
    study = optuna.load_study(study_name="automl-prune", storage=f"sqlite:///{out / 'study.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3 and all(0 <= t.value <= 1 for t in done)  # mean acc_norm of 2 tasks x 4 documents


# ------------------------------------------------------------------------------------------- lm-eval

@pytest.mark.skipif(not HAS_LM_EVAL, reason="lm_eval is not installed (pip install lm_eval)")
def test_builtin_scorer_agrees_with_lm_eval(tiny, data_dir):
    """lm-eval's own task configs (their YAMLs) on the local documents: the same requests, the same
    log-likelihoods, the same metrics."""
    from automl_prune.evaluation.zeroshot.lm_eval_backend import evaluate_with_lm_eval

    model, tok = tiny
    tasks = ["arc_easy", "piqa"]
    ours = ZeroShotSuite(tasks, tok, limit=10, data_dir=data_dir)
    mine = ours.evaluate(model, progress=False)
    theirs = evaluate_with_lm_eval(model, tok, tasks, limit=10, data_dir=data_dir, samples=True)
    for task in tasks:
        items = ours.prepared[task].items
        assert [r for s in theirs["samples"][task] for r in s["requests"]] == \
            [(c, x) for it in items for c, x in zip(it.contexts, it.continuations)]
        ll_ours = loglikelihoods(model, ours.prepared[task].requests, progress=False)
        ll_theirs = [r for s in theirs["samples"][task] for r in s["loglikelihoods"]]
        assert max(abs(a[0] - b[0]) for a, b in zip(ll_ours, ll_theirs)) < 1e-4
        assert [a[1] for a in ll_ours] == [b[1] for b in ll_theirs]
        for metric in ("acc", "acc_norm"):
            assert mine["tasks"][task][metric] == pytest.approx(theirs["tasks"][task][metric])
        assert theirs["tasks"][task]["n"] == 10

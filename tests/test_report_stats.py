"""report_stats: the paired bootstrap is the sacrebleu CLI's, and the small statistics match hand computations."""

from __future__ import annotations

import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from attnlab.report.stats import direction_agreement, paired_bootstrap, read_lines, seed_summary, seed_test, spearman

REFS = [
    "The cat sat on the mat.",
    "A man is riding a bicycle down the street.",
    "Two dogs are playing in the snow.",
    "She did not know what to say.",
    "The children went to school early this morning.",
    "He bought fresh bread at the bakery.",
    "It rained all day, so we stayed inside.",
    "The train to Berlin leaves at eight o'clock.",
    "My sister plays the violin in an orchestra.",
    "We watched a film about the ocean.",
    "The old bridge was closed for repairs.",
    "A woman in a red coat is waiting for the bus.",
    "They painted the kitchen walls yellow.",
    "The museum opens at ten on Sundays.",
    "Ein Hund läuft über die Wiese.",
    "Please close the window before you leave.",
    "The soup tastes better with a little salt.",
    "Our neighbours have three cats and a parrot.",
    "The meeting was moved to Thursday afternoon.",
    "He forgot his umbrella at the café.",
    "The river flows slowly through the valley.",
    "A group of tourists is taking photos of the cathedral.",
    "She reads the newspaper every morning with coffee.",
    "The team won the match in the last minute.",
    "I can't find my keys anywhere!",
    "The garden is full of flowers in spring.",
    "Two men are carrying a sofa up the stairs.",
    "The baby is sleeping in her cot.",
    "We need more chairs for the guests.",
    "The lights went out during the storm.",
]


def _drop_last_word(sentence: str) -> str:
    words = sentence.split()
    return " ".join(words[:-1]) if len(words) > 1 else sentence


def _swap_first_two(sentence: str) -> str:
    words = sentence.split()
    return " ".join(words[1:2] + words[:1] + words[2:])


# The reference system loses a word in every second sentence and word order in every third;
# "close" differs from it in two sentences only (not significant); "better" is the
# reference text in all but every fifth sentence (clearly significant).
BASE = [_drop_last_word(s) if i % 2 == 0 else s for i, s in enumerate(REFS)]
BASE = [_swap_first_two(h) if i % 3 == 0 else h for i, h in enumerate(BASE)]
CLOSE = [REFS[i] if i in (0, 4) else h for i, h in enumerate(BASE)]
BETTER = [_drop_last_word(s) if i % 5 == 0 else s for i, s in enumerate(REFS)]

SACREBLEU = str(Path(sys.executable).with_name("sacrebleu"))
TRIPLE = re.compile(r"(-?\d+\.\d+) \((-?\d+\.\d+) ± (-?\d+\.\d+)\)")
P_VALUE = re.compile(r"\(p = (\d\.\d+)\)")


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _cli_paired_bs(tmp_path: Path, seed: str | None) -> tuple[list[tuple[float, float, float]], list[float]]:
    """The sacrebleu CLI on files: (score, mean, ci) per system and metric row-major, and p-values."""
    files = [
        _write(tmp_path, n, lines) for n, lines in (("base.txt", BASE), ("close.txt", CLOSE), ("better.txt", BETTER))
    ]
    refs = _write(tmp_path, "refs.txt", REFS)
    env = {k: v for k, v in os.environ.items() if k != "SACREBLEU_SEED"}
    if seed is not None:
        env["SACREBLEU_SEED"] = seed
    # `-f text`: sacrebleu 2.6's JSON output crashes on the float32 means of a paired test.
    command = [SACREBLEU, str(refs), "-i", *map(str, files), "-m", "bleu", "chrf", "--paired-bs"]
    command += ["--paired-bs-n", "1000", "-w", "6", "-f", "text", "--no-color", "-q"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8", check=True).stdout
    table = out.split("Paired bootstrap")[0]
    triples = [tuple(float(v) for v in m) for m in TRIPLE.findall(table)]
    return triples, [float(p) for p in P_VALUE.findall(table)]


@pytest.mark.parametrize("seed", [None, 7])
def test_paired_bootstrap_equals_the_sacrebleu_cli(tmp_path, seed):
    cli_triples, cli_p = _cli_paired_bs(tmp_path, None if seed is None else str(seed))
    assert len(cli_triples) == 6 and len(cli_p) == 4

    kwargs = {} if seed is None else {"seed": seed}  # None: our default must be sacreBLEU's 12345
    ours = paired_bootstrap(BASE, {"close": CLOSE, "better": BETTER}, REFS, **kwargs)
    rows = [ours[s][m] for s in ("reference", "close", "better") for m in ("bleu", "chrf")]
    for result, (score, mean, ci) in zip(rows, cli_triples, strict=True):
        # the CLI prints 6 decimals (-w 6)
        assert result.score == pytest.approx(score, abs=6e-7)
        assert result.mean == pytest.approx(mean, abs=6e-7)
        assert result.ci == pytest.approx(ci, abs=6e-7)
    for result, p in zip(rows[2:], cli_p, strict=True):
        # p = (count + 1) / 1001 and the CLI prints 4 decimals, which pins the count exactly
        assert round(result.p_value, 4) == p
    assert ours["reference"]["bleu"].p_value is None
    assert not ours["close"]["bleu"].significant and ours["close"]["bleu"].p_value > 0.05
    assert ours["better"]["bleu"].significant and ours["better"]["chrf"].significant
    assert ours["better"]["bleu"].ci_low == pytest.approx(ours["better"]["bleu"].mean - ours["better"]["bleu"].ci)


def test_paired_bootstrap_seed_changes_the_draw_and_leaves_the_environment_alone(monkeypatch):
    monkeypatch.setenv("SACREBLEU_SEED", "99")
    a = paired_bootstrap(BASE, {"close": CLOSE}, REFS, metrics=("bleu",), n_samples=200, seed=1)
    b = paired_bootstrap(BASE, {"close": CLOSE}, REFS, metrics=("bleu",), n_samples=200, seed=2)
    assert a["close"]["bleu"].score == b["close"]["bleu"].score
    assert a["close"]["bleu"].mean != b["close"]["bleu"].mean
    assert os.environ["SACREBLEU_SEED"] == "99"
    assert "seed:1|" in a["close"]["bleu"].signature and "bs:200" in a["close"]["bleu"].signature


def test_paired_bootstrap_scores_are_the_projects_test_metrics():
    from attnlab.training.metrics import corpus_scores, signatures

    ours = paired_bootstrap(BASE, {"better": BETTER}, REFS, n_samples=10)
    for name, hyps in (("reference", BASE), ("better", BETTER)):
        expected = corpus_scores(hyps, REFS)
        assert ours[name]["bleu"].score == pytest.approx(expected["bleu"], abs=1e-9)
        assert ours[name]["chrf"].score == pytest.approx(expected["chrf"], abs=1e-9)
    # the same metric settings: the project's signatures plus the bootstrap's own fields
    for metric, signature in signatures().items():
        fields = set(ours["better"][metric].signature.split("|"))
        assert set(signature.split("|")) <= fields
    assert "tok:13a" in ours["better"]["bleu"].signature


def test_paired_bootstrap_takes_reference_streams():
    one = paired_bootstrap(BASE, {"better": BETTER}, REFS, metrics=("bleu",), n_samples=50)
    streams = paired_bootstrap(BASE, {"better": BETTER}, [REFS], metrics=("bleu",), n_samples=50)
    assert one == streams
    two = paired_bootstrap(BASE, {"better": BETTER}, [REFS, BASE], metrics=("bleu",), n_samples=50)
    assert "nrefs:2" in two["better"]["bleu"].signature
    assert two["reference"]["bleu"].score == pytest.approx(100.0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: paired_bootstrap(BASE, {"short": BETTER[:-1]}, REFS), "'short' has 29 hypotheses"),
        (lambda: paired_bootstrap(BASE, {"b": BETTER}, REFS[:-1]), "reference stream 0 has 29 lines"),
        (lambda: paired_bootstrap(BASE, {"b": BETTER}, REFS, metrics=("meteor",)), "choose from"),
        (lambda: paired_bootstrap(BASE, {"reference": BETTER}, REFS), "reference_name"),
    ],
)
def test_paired_bootstrap_refuses_bad_input(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_seed_summary_is_the_student_t_interval():
    s = seed_summary([1, 2, 3, 4, 5])
    t_975_4 = 2.7764451051977987  # Student's t table, 4 degrees of freedom
    half = t_975_4 * math.sqrt(2.5) / math.sqrt(5)
    assert (s.mean, s.n) == (3.0, 5)
    assert s.std == pytest.approx(math.sqrt(2.5), abs=1e-12)
    assert s.ci_low == pytest.approx(3 - half, abs=1e-9) and s.ci_high == pytest.approx(3 + half, abs=1e-9)
    assert s.ci_high - 3 == pytest.approx(1.963243, abs=1e-6)

    two = seed_summary([0.0, 1.0])
    t_975_1 = 12.706204736174698
    assert two.ci_high == pytest.approx(0.5 + t_975_1 * math.sqrt(0.5) / math.sqrt(2), abs=1e-9)

    one = seed_summary([27.5])
    assert (one.mean, one.std, one.n, one.ci_low, one.ci_high) == (27.5, None, 1, None, None)


@pytest.mark.parametrize("values", [[], [1.0, float("nan")]])
def test_seed_summary_refuses_empty_and_nan(values):
    with pytest.raises(ValueError):
        seed_summary(values)


def test_seed_test_is_welch():
    a, b = [20.1, 20.3, 19.8, 20.0], [21.5, 23.9, 20.2]
    va, vb = statistics.variance(a), statistics.variance(b)
    se2 = va / 4 + vb / 3
    t = (sum(a) / 4 - sum(b) / 3) / math.sqrt(se2)
    df = se2**2 / ((va / 4) ** 2 / 3 + (vb / 3) ** 2 / 2)  # Welch-Satterthwaite
    from scipy import stats

    expected = 2 * stats.t.sf(abs(t), df)
    assert seed_test(a, b) == pytest.approx(expected, rel=1e-6)
    pooled = stats.ttest_ind(a, b).pvalue
    assert abs(expected - pooled) > 0.02  # Student's pooled test would give another answer
    assert seed_test([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert seed_test([1.0, 1.0], [2.0, 2.0]) == 0.0
    with pytest.raises(ValueError, match="two seeds a side"):
        seed_test([1.0], [1.0, 2.0])


def test_spearman_with_ties_is_pearson_on_average_ranks():
    # ranks x: 1, 2.5, 2.5, 4, 5; ranks y: 2, 1, 3.5, 3.5, 5 -> 7.25 / sqrt(9.5 * 9.5) = 29/38
    # (the no-ties shortcut 1 - 6 sum d^2 / (n (n^2 - 1)) would give 0.775)
    assert spearman([1, 2, 2, 3, 5], [2, 1, 4, 4, 6]) == pytest.approx(29 / 38, abs=1e-12)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))
    with pytest.raises(ValueError, match="3 values against 2"):
        spearman([1, 2, 3], [1, 2])


def test_direction_agreement():
    paper = [1.0, -0.5, None, 0.05, 2.0]
    ours = [0.8, 0.3, 5.0, -0.02, 1.5]
    # agree, disagree, skipped, both within tol (no change), agree
    assert direction_agreement(paper, ours, tol=0.1) == 0.75
    assert direction_agreement(paper, ours) == 0.5  # with tol 0, 0.05 and -0.02 point opposite ways
    assert direction_agreement([None], [1.0]) is None


def test_read_lines_refuses_files_of_different_lengths(tmp_path):
    refs = _write(tmp_path, "refs.txt", ["a", "b", "c"])
    hyps = _write(tmp_path, "hyps.txt", ["a", "b"])
    with pytest.raises(ValueError) as err:
        read_lines(refs, hyps)
    assert f"{refs}: 3 lines" in str(err.value) and f"{hyps}: 2 lines" in str(err.value)


def test_read_lines_reads_as_the_sacrebleu_cli(tmp_path):
    path = tmp_path / "h.txt"
    path.write_bytes("Zoë saß \r\nzwei\rdrei\u2028vier\n\n".encode())
    [lines] = read_lines(path)
    # CRLF and lone CR end lines, U+2028 does not; trailing blanks go, as in the CLI
    assert lines == ["Zoë saß", "zwei", "drei\u2028vier", ""]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\nok\n\xff\n")
    with pytest.raises(ValueError, match=r"bad.txt: line 3 is not UTF-8"):
        read_lines(bad)

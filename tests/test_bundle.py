"""Program bundles and agreed arguments (issue 15, items 3 and 4), without a network.

The bundle digest is recomputed independently of didmesh with coreutils (``find``,
``sort``, ``sha256sum``) exactly as specs/session-protocol.md (section 2.1) says, and
checked against a fixed vector; the manifest's bundle part is parsed strictly; a party's
folder is compared file by file; arguments are checked one by one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from adversary.fuzz import fuzz_settings, mutate, tree_errors_or_known
from didmesh.identity.keys import IdentityKey
from didmesh.session import bundle as bundles
from didmesh.session.bundle import BundleFile
from didmesh.session.cli.run_cmd import parse_inputs
from didmesh.session.errors import (
    BadSessionParameters,
    ManifestInvalid,
    ProgramArgsMismatch,
    ProgramDigestMismatch,
)
from didmesh.session.manifest import (
    Manifest,
    check_args,
    check_inputs,
    new_manifest,
    verify_program,
)
from hypothesis import given
from hypothesis import strategies as st

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "weighted_score"
ORG = IdentityKey.from_seed(bytes(range(32)))
NOW = datetime(2026, 1, 1, tzinfo=UTC)

# A fixed vector: these three files give this digest (recomputed with the shell line in
# specs/session-protocol.md, section 2.1, when the vector was written).
VECTOR_FILES = {"main.py": b"print('hi')\n", "lib/util.py": b"X = 1\n", "data/a b.csv": b"1,2\n"}
VECTOR_DIGEST = "cc3cc603180d79385af54d135756c42dd7ff63797de3c36201c5e2b98181a968"


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def shell_digest(root: Path) -> str:
    """The spec's recipe, run by coreutils: no didmesh code involved."""
    script = (
        "{ echo didmesh-bundle/v1; find . -type f -not -path '*/.*' -not -path "
        "'*/__pycache__/*' -not -name '*.pyc' -printf '%P\\0' | LC_ALL=C sort -z "
        "| xargs -0 -r sha256sum; } | sha256sum"
    )
    res = subprocess.run(["sh", "-c", script], cwd=root, capture_output=True, text=True,
                         check=True, timeout=30)
    return res.stdout.split()[0]


def manifest_for(program: Path, **kw: object) -> Manifest:
    return new_manifest(organizer=ORG.did, program=program, parties=3,
                        relays=["http://127.0.0.1:8470"], now=NOW, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- digest


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum")
@pytest.mark.parametrize("files", [
    VECTOR_FILES,
    {"main.py": b"", "z.py": b"z", "A.py": b"A", "a/b/c/d.txt": os.urandom(3000),
     "a-b.py": b"-", "a.py": b".", "a/x.py": b"/", "Z z/~x@y=1,2+3.dat": b"odd names"},
    {"only.py": b"x" * 100_000},
], ids=["vector", "sort-order-and-names", "one-file"])
def test_digest_equals_independent_shell_recomputation(tmp_path: Path,
                                                       files: dict[str, bytes]) -> None:
    root = make_tree(tmp_path / "b", files)
    make_tree(root, {"__pycache__/m.cpython-311.pyc": b"cache", ".git/HEAD": b"ref",
                     "lib/.hidden": b"h", "lib/x.pyc": b"c"})  # always left out
    got = bundles.collect(root)
    assert [f.path for f in got] == sorted(files, key=lambda p: p.encode())
    assert bundles.bundle_digest(got) == shell_digest(root)


def test_digest_vector() -> None:
    files = [BundleFile(p, len(d), hashlib.sha256(d).hexdigest()) for p, d in VECTOR_FILES.items()]
    assert bundles.bundle_digest(files) == VECTOR_DIGEST
    assert bundles.listing(files).decode().splitlines()[0] == "didmesh-bundle/v1"


def test_digest_covers_paths_and_contents(tmp_path: Path) -> None:
    base = bundles.bundle_digest(bundles.collect(make_tree(tmp_path / "a", VECTOR_FILES)))
    renamed = {("lib/util2.py" if k == "lib/util.py" else k): v for k, v in VECTOR_FILES.items()}
    changed = {**VECTOR_FILES, "data/a b.csv": b"1,3\n"}
    for i, variant in enumerate((renamed, changed)):
        other = bundles.collect(make_tree(tmp_path / f"v{i}", variant))
        assert bundles.bundle_digest(other) != base


# --------------------------------------------------------------------------- collecting


def test_include_and_exclude(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "b", {"main.py": b"m", "lib/u.py": b"u", "out/r.txt": b"r",
                                      "notes.md": b"n"})
    assert [f.path for f in bundles.collect(root, exclude=["out", "*.md"])] == [
        "lib/u.py", "main.py"]
    assert [f.path for f in bundles.collect(root, include=["*.py"])] == ["lib/u.py", "main.py"]


@pytest.mark.parametrize("case", ["escaping-file", "escaping-folder", "broken", "inner-folder"])
def test_symlinks_that_leave_the_folder_are_refused(tmp_path: Path, case: str) -> None:
    root = make_tree(tmp_path / "b", {"main.py": b"m", "sub/x.txt": b"x"})
    (tmp_path / "secret.txt").write_text("outside")
    link = root / "link"
    target = {"escaping-file": tmp_path / "secret.txt", "escaping-folder": tmp_path,
              "broken": tmp_path / "nope", "inner-folder": root / "sub"}[case]
    link.symlink_to(target)
    with pytest.raises(BadSessionParameters) as info:
        bundles.collect(root)
    assert "link" in info.value.message


def test_symlink_to_a_file_inside_is_read_through(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "b", {"main.py": b"m", "data/x.csv": b"1"})
    (root / "x.csv").symlink_to(root / "data" / "x.csv")
    got = {f.path: f for f in bundles.collect(root)}
    assert got["x.csv"].sha256 == got["data/x.csv"].sha256


def test_caps_on_file_count_and_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_tree(tmp_path / "b", {f"f{i:03}.txt": b"x" for i in range(bundles.MAX_FILES + 1)})
    with pytest.raises(BadSessionParameters, match="more than 64 files"):
        bundles.collect(root)
    small = make_tree(tmp_path / "s", {"main.py": b"x" * 2000, "b.py": b"y" * 2000})
    monkeypatch.setattr(bundles, "MAX_FILE_BYTES", 1000)
    with pytest.raises(BadSessionParameters, match="b.py is 2000 bytes"):
        bundles.collect(small)
    monkeypatch.setattr(bundles, "MAX_FILE_BYTES", 10_000)
    monkeypatch.setattr(bundles, "MAX_BUNDLE_BYTES", 3000)
    with pytest.raises(BadSessionParameters, match="exceeds 3000 bytes"):
        bundles.collect(small)


def test_file_list_must_fit_the_roster(tmp_path: Path) -> None:
    """The roster credential repeats the manifest in every acceptance: the bound is the
    credential's size (the roster message carries the list once)."""
    root = make_tree(tmp_path / "b", {f"pkg/module_{i:03}.py": b"x" for i in range(60)})
    (root / "main.py").write_text("m")
    for parties in (3, 10, 20):
        assert new_manifest(organizer=ORG.did, program=root, parties=parties,
                            relays=["http://127.0.0.1:8470"], now=NOW).program.is_bundle
    with pytest.raises(BadSessionParameters,
                       match="61 bundle files .* for 30 parties, above the 262144"):
        new_manifest(organizer=ORG.did, program=root, parties=30,
                     relays=["http://127.0.0.1:8470"], now=NOW)


@pytest.mark.parametrize("path", ["/etc/passwd", "../x.py", "a/../b.py", "a//b", "./a", "a/.",
                                  "", "a\\b", "a\nb", "x" * 121, " lead.py", "tab\t.py"])
def test_bad_paths_are_named(path: str) -> None:
    assert bundles.path_error(path) is not None


# --------------------------------------------------------------------------- manifest


def test_bundle_manifest_round_trip_and_entry(tmp_path: Path) -> None:
    m = manifest_for(EXAMPLE, args=["--scale", "10"])
    assert m.program.is_bundle and m.program.name == "main.py"
    assert [f.path for f in m.program.files] == ["data/weights.csv", "main.py", "scoring.py"]
    assert m.program.sha256 == shell_digest(EXAMPLE)
    again = Manifest.from_json(m.to_json())
    assert again.same_as(m) and again.program.files == m.program.files
    root = make_tree(tmp_path / "two", {"a.py": b"a", "b.py": b"b"})
    with pytest.raises(BadSessionParameters, match="--entry"):
        manifest_for(root)
    assert manifest_for(root, entry="b.py").program.name == "b.py"
    with pytest.raises(BadSessionParameters, match="not a file of the bundle"):
        manifest_for(root, entry="c.py")
    with pytest.raises(BadSessionParameters, match="apply to a program folder"):
        manifest_for(EXAMPLE / "main.py", exclude=["*.csv"])


def test_single_file_manifest_is_unchanged(tmp_path: Path) -> None:
    prog = tmp_path / "sum.py"
    prog.write_text("print(1)\n")
    data = manifest_for(prog).to_json()
    assert set(data["program"]) == {"name", "sha256", "mpyc", "args"}  # as before bundles
    assert data["program"]["sha256"] == hashlib.sha256(prog.read_bytes()).hexdigest()
    assert Manifest.from_json(data).program.is_bundle is False


def _mutations() -> list[tuple[str, object]]:
    return [
        ("files-not-sorted", lambda b: b["files"].reverse()),
        ("repeated-path", lambda b: b["files"].append(dict(b["files"][-1]))),
        ("escaping-path", lambda b: b["files"][0].update(path="../evil.py")),
        ("absolute-path", lambda b: b["files"][0].update(path="/etc/passwd")),
        ("digest-not-of-files", lambda b: b["files"][0].update(sha256="0" * 64)),
        ("size-negative", lambda b: b["files"][0].update(size=-1)),
        ("size-huge", lambda b: b["files"][0].update(size=10**30)),
        ("unknown-key", lambda b: b.update(extra=1)),
        ("file-unknown-key", lambda b: b["files"][0].update(mode=0o755)),
        ("no-files", lambda b: b.update(files=[])),
        ("bad-pattern", lambda b: b.update(exclude=["$(rm -rf)"])),
    ]


@pytest.mark.parametrize(("name", "mutate"), _mutations(), ids=[n for n, _ in _mutations()])
def test_tampered_bundle_manifests_are_rejected(name: str, mutate: object) -> None:
    data = manifest_for(EXAMPLE).to_json()
    mutate(data["program"]["bundle"])  # type: ignore[operator]
    with pytest.raises(ManifestInvalid):
        Manifest.from_json(data)


def test_entry_must_be_in_the_bundle() -> None:
    data = manifest_for(EXAMPLE).to_json()
    data["program"]["name"] = "other.py"
    with pytest.raises(ManifestInvalid, match="program.name"):
        Manifest.from_json(data)


# --------------------------------------------------------------------------- checking a copy


def test_verify_names_the_first_file_that_differs(tmp_path: Path) -> None:
    m = manifest_for(EXAMPLE)
    copy = tmp_path / "copy"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    local = verify_program(m, copy)
    assert local.root == copy.resolve() and local.entry == copy.resolve() / "main.py"
    assert verify_program(m, copy / "main.py").root == copy.resolve()  # the entry file works too
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "x.pyc").write_bytes(b"cache")  # never part of a bundle
    verify_program(m, copy)

    data = copy / "data" / "weights.csv"
    original = data.read_bytes()
    data.write_bytes(original[:-2] + bytes([original[-2] ^ 1]) + original[-1:])  # one byte
    with pytest.raises(ProgramDigestMismatch) as info:
        verify_program(m, copy)
    assert info.value.message.startswith("data/weights.csv in ") and "differs" in info.value.message
    assert info.value.file == "data/weights.csv"
    data.write_bytes(original)

    (copy / "extra.py").write_text("x = 1\n")
    with pytest.raises(ProgramDigestMismatch, match="extra.py .* not in the bundle") as info:
        verify_program(m, copy)
    assert info.value.file == "extra.py" and "added" in info.value.problem
    (copy / "extra.py").unlink()

    (copy / "scoring.py").unlink()
    with pytest.raises(ProgramDigestMismatch, match="scoring.py of the bundle .* is missing"):
        verify_program(m, copy)
    with pytest.raises(ProgramDigestMismatch, match="give its folder"):
        verify_program(m, tmp_path / "elsewhere.py")


def test_verify_single_file_program(tmp_path: Path) -> None:
    prog = tmp_path / "p.py"
    prog.write_text("print(1)\n")
    m = manifest_for(prog)
    assert verify_program(m, prog).entry == prog.resolve()
    assert verify_program(m, tmp_path).entry == prog.resolve()  # its folder works too
    prog.write_text("print(2)\n")
    with pytest.raises(ProgramDigestMismatch, match="nothing starts"):
        verify_program(m, prog)


# --------------------------------------------------------------------------- arguments, inputs


@pytest.mark.parametrize(("given", "expect"), [
    ([], ["--scale", "10"]),
    (["--scale", "10"], ["--scale", "10"]),
    (["--no-log"], ["--scale", "10", "--no-log"]),
    (["--scale", "10", "--no-log"], ["--scale", "10", "--no-log"]),
    (["--scale", "11"], "argument 2 is '11' here but '10' was agreed"),
    (["--scale"], "argument 2 '10' is missing"),
    (["--scale", "10", "--verbose"], "argument 3 '--verbose' was not agreed"),
    (["--size", "10"], "argument 1 is '--size' here but '--scale' was agreed"),
], ids=["none", "same", "local-flag", "same-plus-local", "changed", "missing", "extra",
        "renamed"])
def test_arguments_must_be_the_agreed_ones(given: list[str], expect: object) -> None:
    m = manifest_for(EXAMPLE, args=["--scale", "10"])
    if isinstance(expect, list):
        assert check_args(m, given) == expect
        return
    with pytest.raises(ProgramArgsMismatch) as info:
        check_args(m, given)
    assert str(expect) in info.value.message and "nothing starts" in info.value.message
    assert info.value.argument and info.value.argument.startswith(str(expect)[:10])


def test_no_agreed_arguments_refuses_any() -> None:
    m = manifest_for(EXAMPLE)
    with pytest.raises(ProgramArgsMismatch, match="agreed on no arguments"):
        check_args(m, ["--value", "3"])


def test_private_inputs_become_environment_variables() -> None:
    assert parse_inputs(["score=42", "NOTE=a=b c"]) == {
        "DIDMESH_INPUT_SCORE": "42", "DIDMESH_INPUT_NOTE": "a=b c"}
    for bad in (["nope"], ["1X=2"], ["A-B=1"], ["A=1", "a=2"], ["A=" + "x" * 70_000]):
        with pytest.raises(BadSessionParameters):
            parse_inputs(bad)


def test_declared_inputs_catch_typos() -> None:
    m = manifest_for(EXAMPLE, inputs=["score", "Weight"])
    assert m.program.inputs == ("SCORE", "WEIGHT")
    assert Manifest.from_json(m.to_json()).program.inputs == ("SCORE", "WEIGHT")
    check_inputs(m, ["score", "WEIGHT"])
    check_inputs(m, [])  # a missing input is the program's business (run prints a note)
    with pytest.raises(BadSessionParameters, match="SCOER is not a private input .* takes "
                       "SCORE, WEIGHT"):
        check_inputs(m, ["SCOER"])
    check_inputs(manifest_for(EXAMPLE), ["ANYTHING"])  # none declared: any name
    assert "inputs" not in manifest_for(EXAMPLE).to_json()["program"]  # as before
    for bad in (["lower"], ["A", "A"], [], ["1X"], "SCORE"):
        data = m.to_json()
        data["program"]["inputs"] = bad
        with pytest.raises(ManifestInvalid, match="program.inputs"):
            Manifest.from_json(data)
    with pytest.raises(BadSessionParameters, match="given twice"):
        manifest_for(EXAMPLE, inputs=["a", "A"])


def test_private_input_files_are_given_by_absolute_path(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.csv").write_text("1,2\n")
    monkeypatch.chdir(tmp_path)
    assert parse_inputs([], ["data=mine.csv"]) == {
        "DIDMESH_INPUT_DATA_FILE": str(tmp_path / "mine.csv")}
    with pytest.raises(BadSessionParameters, match="is not a file"):
        parse_inputs([], ["data=nope.csv"])
    with pytest.raises(BadSessionParameters, match="given twice"):
        parse_inputs(["DATA_FILE=x"], ["data=mine.csv"])


# --------------------------------------------------------------------------- fuzzing


_BUNDLE_JSON = manifest_for(EXAMPLE, args=["--scale", "10"], inputs=["SCORE"]).to_json()


@fuzz_settings(200)
@given(data=st.data())
def test_fuzz_bundle_manifest(data: st.DataObject) -> None:
    """Any mutation of a bundle manifest only raises errors of the tree, and whatever
    parses is self-consistent (its digest is its file list's)."""
    doc = mutate(_BUNDLE_JSON, data, rounds=3)
    got = tree_errors_or_known("Manifest.from_json", Manifest.from_json, doc)
    if got is not None:
        assert Manifest.from_json(got.to_json()) == got
        if got.program.is_bundle:
            assert got.program.sha256 == bundles.bundle_digest(got.program.files)

"""Params files: .npz, PyTorch state_dicts and checkpoints, safetensors; errors that name the file and the problem."""

import sys

import numpy as np
import pytest

from sospcheck import check
from sospcheck.cli import main
from sospcheck.demo import EXAMPLES
from sospcheck.io import (InputError, check_writable, clean_message, load_data, load_params, params_format,
                          save_direction)
from sospcheck.model import Direction


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_slopes_from_file_or_options(tmp_path):
    ex = EXAMPLES[1]
    base = dict(W1=ex.net.W1, b1=ex.net.b1, W2=ex.net.W2, b2=ex.net.b2)
    plain = _npz(tmp_path / "plain.npz", **base)
    assert (load_params(plain).s_plus, load_params(plain).s_minus) == (1.0, 0.0)
    assert load_params(plain, s_minus=0.01).s_minus == 0.01
    stored = _npz(tmp_path / "leaky.npz", **base, s_minus=0.2)
    assert load_params(stored).s_minus == 0.2
    assert load_params(stored, s_minus=0.2).s_minus == 0.2
    with pytest.raises(InputError, match=r"--s-minus 0.01 contradicts s_minus = 0.2"):
        load_params(stored, s_minus=0.01)


def test_npz_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        load_params(str(tmp_path))
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(InputError, match="single .npy array"):
        load_params(str(tmp_path / "single.npz"))


# ---------------------------------------------------------------- PyTorch


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _sequential(torch, dx=2, dh=3, dy=1, bias1=True, bias2=True, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dx, dh, bias=bias1), torch.nn.ReLU(), torch.nn.Linear(dh, dy, bias=bias2))


def _same(net, model):
    first, second = model[0], model[2]
    np.testing.assert_array_equal(net.W1, first.weight.detach().double().numpy())
    np.testing.assert_array_equal(net.W2, second.weight.detach().double().numpy())
    for ours, layer in ((net.b1, first), (net.b2, second)):
        if layer.bias is None:
            assert ours is None
        else:
            np.testing.assert_array_equal(ours, layer.bias.detach().double().numpy())


def test_sequential_state_dict(tmp_path, torch):
    model = _sequential(torch)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    assert sorted(model.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    net = load_params(str(path))
    _same(net, model)
    assert (net.s_plus, net.s_minus) == (1.0, 0.0)
    assert load_params(str(path), s_minus=0.01).s_minus == 0.01


@pytest.mark.parametrize("bias1,bias2", [(False, True), (True, False), (False, False)])
def test_bias_free_layers_need_no_flag(tmp_path, torch, bias1, bias2):
    model = _sequential(torch, bias1=bias1, bias2=bias2)
    path = tmp_path / "nobias.pt"
    torch.save(model.state_dict(), path)
    net = load_params(str(path))
    _same(net, model)
    assert load_params(str(path), no_bias1=not bias1, no_bias2=not bias2).n_params == net.n_params
    if bias1:
        with pytest.raises(InputError, match="--no-bias1 says the network has none"):
            load_params(str(path), no_bias1=True)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict"])
def test_checkpoint_dicts(tmp_path, torch, key):
    model = _sequential(torch, dy=2)
    path = tmp_path / "ckpt.pth"
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.save({key: model.state_dict(), "optimizer": opt.state_dict(), "epoch": 7, "s_minus": 0.05}, path)
    net = load_params(str(path))
    _same(net, model)
    assert net.s_minus == 0.05


def test_named_layers_are_ordered_by_shape_then_name(tmp_path, torch):
    W1, W2 = torch.randn(5, 3), torch.randn(2, 5)
    path = tmp_path / "named.pt"
    torch.save({"z_hidden.weight": W1, "a_out.weight": W2, "a_out.bias": torch.zeros(2)}, path)
    net = load_params(str(path))
    assert net.W1.shape == (5, 3) and net.W2.shape == (2, 5) and net.b1 is None and net.b2 is not None
    square = tmp_path / "square.pt"
    A, B = torch.randn(2, 2), torch.randn(2, 2)
    torch.save({"fc2.weight": B, "fc1.weight": A}, square)
    np.testing.assert_array_equal(load_params(str(square)).W1, A.double().numpy())


def test_lower_precision_tensors_become_float64(tmp_path, torch):
    model = _sequential(torch).to(torch.bfloat16)
    path = tmp_path / "bf16.pt"
    torch.save(model.state_dict(), path)
    net = load_params(str(path))
    assert net.W1.dtype == np.float64
    np.testing.assert_array_equal(net.W1, model[0].weight.detach().double().numpy())


def test_torch_file_with_another_extension_is_recognized(tmp_path, torch):
    path = tmp_path / "weights.bin"
    torch.save(_sequential(torch).state_dict(), path)
    assert params_format(str(path)) == "torch"
    assert load_params(str(path)).dh == 3


@pytest.mark.parametrize("make,match", [
    # three or more layers are a deep network (sospcheck.deep); their widths must chain too
    (lambda torch: {"0.weight": torch.zeros(3, 2), "2.weight": torch.zeros(3, 4), "4.weight": torch.zeros(1, 3)},
     "does not take the output"),
    (lambda torch: {**_sequential(torch).state_dict(), "1.running_mean": torch.zeros(3)}, "unexpected key"),
    (lambda torch: {"0.weight": torch.zeros(3, 2), "2.weight": torch.zeros(1, 4)}, "do not chain"),
    (lambda torch: {"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(2), "2.weight": torch.zeros(1, 3)},
     r"layer '0' has weight \(3, 2\), bias \(2,\)"),
    (lambda torch: torch.zeros(3), "holds Tensor"),
    (lambda torch: {"epoch": 3, "optimizer": {}}, "neither a state_dict"),
])
def test_unsupported_torch_files(tmp_path, torch, make, match):
    path = tmp_path / "bad.pt"
    torch.save(make(torch), path)
    with pytest.raises(InputError, match=match):
        load_params(str(path))


def test_pickled_module_is_refused_and_nothing_runs(tmp_path, torch):
    path = tmp_path / "module.pt"
    torch.save(_sequential(torch), path)
    with pytest.raises(InputError, match=r"weights_only=True.*save model.state_dict\(\)"):
        load_params(str(path))


def test_missing_torch_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"whatever")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(InputError, match=r"needs PyTorch: pip install 'sospcheck\[torch\]'"):
        load_params(str(path))


def test_cli_checks_a_state_dict_like_the_npz(tmp_path, torch, capsys):
    ex = EXAMPLES[1]
    model = _sequential(torch, dx=1, dh=1, dy=1)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(ex.net.W1))
        model[0].bias.copy_(torch.tensor(ex.net.b1))
        model[2].weight.copy_(torch.tensor(ex.net.W2))
        model[2].bias.copy_(torch.tensor(ex.net.b2))
    pt, data = tmp_path / "m.pt", tmp_path / "d.npz"
    torch.save(model.state_dict(), pt)
    np.savez(data, X=ex.X, Y=ex.Y)
    assert main(["check", "--params", str(pt), "--data", str(data), "--loss", "squared", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == check(ex.net, ex.X, ex.Y).verdict.value == "local_minimum"


def test_cli_error_from_a_corrupt_torch_file_is_one_line(tmp_path, torch, capsys):
    bad, data = tmp_path / "bad.pt", tmp_path / "d.npz"
    bad.write_bytes(b"\x80\x02not really a pickle\n\nwith\nlines")
    np.savez(data, X=np.zeros((2, 1)), Y=np.zeros(2))
    assert main(["check", "--params", str(bad), "--data", str(data), "--loss", "squared"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sospcheck: error: --params file") and len(err.splitlines()) == 1


# ---------------------------------------------------------------- safetensors


def test_safetensors_state_dict_and_metadata(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    W1, b1, W2 = np.arange(6.0).reshape(3, 2), np.ones(3), np.ones((1, 3))
    path = tmp_path / "m.safetensors"
    st.save_file({"0.weight": W1.astype(np.float32), "0.bias": b1.astype(np.float32),
                  "2.weight": W2.astype(np.float32)}, str(path), metadata={"s_minus": "0.01"})
    net = load_params(str(path))
    np.testing.assert_array_equal(net.W1, W1)
    assert net.b2 is None and net.s_minus == 0.01
    named = tmp_path / "named.safetensors"
    st.save_file({"W1": W1, "b1": b1, "W2": W2}, str(named))
    with pytest.raises(InputError, match=r"lacks key\(s\) \['b2'\]"):
        load_params(str(named))
    assert load_params(str(named), no_bias2=True).b2 is None


def test_safetensors_errors(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_params(str(bad))
    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(InputError, match=r"pip install 'sospcheck\[safetensors\]'"):
        load_params(str(bad))


# ---------------------------------------------------------------- hostile files (issue 12)


def test_params_npz_refuses_unknown_keys_but_accepts_the_data(tmp_path):
    ex = EXAMPLES[1]
    base = dict(W1=ex.net.W1, b1=ex.net.b1, W2=ex.net.W2, b2=ex.net.b2)
    assert load_params(_npz(tmp_path / "both.npz", **base, X=ex.X, Y=ex.Y)).dh == ex.net.dh
    with pytest.raises(InputError, match=r"unexpected key\(s\) \['W3', 'arr_0'\]"):
        load_params(_npz(tmp_path / "deep.npz", **base, W3=np.ones((1, 1)), arr_0=np.ones(1)))


def test_data_file_reads_only_x_and_y(tmp_path):
    # other keys (here an object array that could not be read without pickles) are never touched
    path = tmp_path / "d.npz"
    np.savez(path, X=np.ones((2, 1)), Y=np.zeros(2), notes=np.array([{"a": 1}], dtype=object))
    X, Y = load_data(str(path))
    assert X.shape == (2, 1) and Y.shape == (2,)


@pytest.mark.parametrize("array,match", [
    (np.ones((2, 2), dtype=np.complex64), r"array 'W1' holds complex numbers \(dtype complex64\)"),
    (np.array([[b"1"]]), r"array 'W1' holds bytes"),
    (np.array([[1]], dtype="timedelta64[s]"), r"array 'W1' holds timedeltas"),
    (np.array([[None]], dtype=object), r"array 'W1' holds Python objects"),
])
def test_npz_dtype_is_checked_from_the_header(tmp_path, array, match):
    path = _npz(tmp_path / "p.npz", W1=array, b1=np.zeros(1), W2=np.ones((1, 1)), b2=np.zeros(1))
    with pytest.raises(InputError, match=match):
        load_params(path)


def test_non_regular_files_are_refused_before_opening(tmp_path):
    import os

    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    assert params_format(str(fifo)) == "torch" and params_format(str(tmp_path / "nothing")) == "npz"
    for path in (fifo, "/dev/null"):
        with pytest.raises(InputError, match="expected a regular file"):
            load_params(str(path))
    with pytest.raises(InputError, match=r"--data path .* is a FIFO"):
        load_data(str(fifo))


def test_save_direction_writes_exactly_the_path_given(tmp_path):
    d = Direction(np.ones((2, 1)), None, np.ones((1, 2)), np.zeros(1))
    save_direction(str(tmp_path / "dir.out"), d)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.out"]
    assert set(np.load(tmp_path / "dir.out").files) == {"W1", "W2", "b2"}


def test_check_writable_names_the_option_and_leaves_nothing_behind(tmp_path):
    check_writable(str(tmp_path / "new.json"), "--json")
    existing = tmp_path / "old.json"
    existing.write_text("keep")
    check_writable(str(existing), "--json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"] and existing.read_text() == "keep"
    existing.chmod(0o444)
    for path, match in ((existing, "is read-only"), (tmp_path, "is a directory"),
                        (tmp_path / "no" / "x.json", "the folder .* does not exist")):
        with pytest.raises(InputError, match=rf"--json '.*':? {match}"):
            check_writable(str(path), "--json")


def test_clean_message_strips_escape_codes_and_control_characters():
    assert clean_message("a\x1b[31mred\x1b[0m\n\tb\x07c\x1b]0;title\x07d") == "ared b cd"
    assert len(clean_message("x" * 1000)) == 300 and clean_message("x" * 1000, limit=None) == "x" * 1000


def test_expanded_and_complex_tensors_are_refused_by_name(tmp_path, torch):
    huge = torch.zeros(1, dtype=torch.float16).expand(20_000, 20_000)
    torch.save({"fc1.weight": huge, "fc2.weight": torch.zeros(1, 20_000)}, tmp_path / "big.pt")
    with pytest.raises(InputError, match=r"`fc1\.weight` has shape \(20000, 20000\)"):
        load_params(str(tmp_path / "big.pt"))
    state = {**_sequential(torch).state_dict(), "2.bias": torch.zeros(1, dtype=torch.complex64)}
    torch.save(state, tmp_path / "complex.pt")
    with pytest.raises(InputError, match=r"`2\.bias` must be a real tensor"):
        load_params(str(tmp_path / "complex.pt"))
    torch.save({"state_dict": _sequential(torch).state_dict(), "s_minus": "0.1"}, tmp_path / "ckpt.pt")
    with pytest.raises(InputError, match=r"`s_minus` must be a real number, got str of strings"):
        load_params(str(tmp_path / "ckpt.pt"))


def test_safetensors_header_is_checked_before_reading(tmp_path):
    pytest.importorskip("safetensors")
    import json
    import struct

    def write(name, header):
        raw = json.dumps(header).encode()
        (tmp_path / name).write_bytes(struct.pack("<Q", len(raw)) + raw)
        return str(tmp_path / name)

    big = write("big.safetensors", {"W1": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 0]}})
    with pytest.raises(InputError, match=r"`W1` has shape \(100000, 100000\)"):
        load_params(big)
    cplx = write("c.safetensors", {"W1": {"dtype": "C64", "shape": [1, 1], "data_offsets": [0, 8]}})
    with pytest.raises(InputError, match=r"tensor 'W1' holds complex numbers"):
        load_params(cplx)
    (tmp_path / "long.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(InputError, match=r"not a readable safetensors file \(header length"):
        load_params(str(tmp_path / "long.safetensors"))


def test_escape_codes_in_a_torch_error_are_stripped(tmp_path, torch):
    import zipfile

    torch.save({"a": torch.zeros(1)}, tmp_path / "ok.pt")
    with zipfile.ZipFile(tmp_path / "ok.pt") as z, zipfile.ZipFile(tmp_path / "evil.pt", "w") as out:
        for n in z.namelist():
            out.writestr(n, b"\x80\x02c\x1b[31mevil\x1b[0m\nfunc\n)R." if n.endswith("data.pkl") else z.read(n))
    with pytest.raises(InputError) as info:
        load_params(str(tmp_path / "evil.pt"))
    text = str(info.value)
    assert "\x1b" not in text and "\n" not in text and "Unsupported global: GLOBAL evil.func" in text
    assert "Re-running" not in text  # torch's advice to load with weights_only=False is left out

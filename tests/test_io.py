"""Params files: .npz, PyTorch state_dicts and checkpoints, safetensors; errors that name the file and the problem."""

import sys

import numpy as np
import pytest

from sospcheck import check
from sospcheck.cli import main
from sospcheck.demo import EXAMPLES
from sospcheck.io import InputError, load_params, params_format


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
    (lambda torch: torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 3),
                                       torch.nn.ReLU(), torch.nn.Linear(3, 1)).state_dict(), r"holds 3 layer\(s\)"),
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

"""Small offline models and the reference's weight-only entry points, run with or without nbwoq.

Shared by tests/clients/test_reference_algorithms.py and scripts/time_reference_algorithms.py.
Everything is built from a config with random weights and a fixed seed: no download.
"""

import contextlib
import copy
import tempfile

import torch
import transformers

import nbwoq_torch

ARCHITECTURES = ("gptj", "opt", "llama")  # and "gpt2", built on demand (GPTQ's Conv1D path)


def build_model(arch, hidden=32, layers=2, vocab=128, seed=0, intermediate=None):
    """A causal LM of ``arch`` with random weights (``torch.manual_seed(seed)``), in eval mode."""
    intermediate = intermediate or 2 * hidden
    heads = max(1, hidden // 16)
    if arch == "gptj":
        config = transformers.GPTJConfig(vocab_size=vocab, n_positions=128, n_embd=hidden, n_layer=layers,
                                         n_head=heads, rotary_dim=4, n_inner=intermediate)
    elif arch == "opt":
        config = transformers.OPTConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                        num_attention_heads=heads, ffn_dim=intermediate, word_embed_proj_dim=hidden,
                                        max_position_embeddings=128)
    elif arch == "gpt2":  # transformers' Conv1D layers
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=128, n_embd=hidden, n_layer=layers,
                                         n_head=heads, n_inner=intermediate)
    elif arch == "llama":
        config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                                          num_hidden_layers=layers, num_attention_heads=heads,
                                          num_key_value_heads=heads, max_position_embeddings=128)
    else:
        raise ValueError(f"unknown architecture {arch!r}")
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    return model.eval()


def calibration_batches(vocab=128, n=2, length=16, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (1, length), generator=generator) for _ in range(n)]


def _calibrate(batches):
    @torch.no_grad()
    def run(model):
        for batch in batches:
            model(batch)

    return run


def _teq_train(batches, steps):
    def run(model):
        alphas = [p for n, p in model.named_parameters() if "alpha" in n]
        optimizer = torch.optim.Adam(alphas, lr=1e-3)
        # OPT trains with dropout: both runs must draw the same masks.
        torch.manual_seed(0)
        model.train()
        for step in range(steps):
            batch = batches[step % len(batches)]
            loss = model(batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()

    return run


def teq_absorb_pairs(model, arch):
    """One explicit absorb pair per block's MLP (TEQ's own tests pass them explicitly)."""
    names = {
        "gptj": ("transformer.h.{}.mlp.fc_in", "transformer.h.{}.mlp.fc_out"),
        "opt": ("model.decoder.layers.{}.fc1", "model.decoder.layers.{}.fc2"),
        "llama": ("model.layers.{}.mlp.up_proj", "model.layers.{}.mlp.down_proj"),
    }[arch]
    n_layers = model.config.num_hidden_layers
    return {names[0].format(i): [names[1].format(i)] for i in range(n_layers)}


# name -> (config factory, whether it calibrates, whether it trains)
def make_config(algorithm, model=None, arch=None):
    from neural_compressor.torch.quantization import AWQConfig, GPTQConfig, RTNConfig, TEQConfig

    if algorithm == "rtn":
        return RTNConfig(bits=4, group_size=32)
    if algorithm == "rtn-sym8":
        return RTNConfig(bits=8, use_sym=True, group_size=-1)
    if algorithm == "rtn-clip":
        return RTNConfig(bits=4, group_size=32, use_mse_search=True)
    if algorithm == "rtn-nf4":
        return RTNConfig(dtype="nf4", group_size=32)
    if algorithm == "rtn-fp4":
        return RTNConfig(dtype="fp4", group_size=32)
    if algorithm == "rtn-double-quant":
        return RTNConfig(bits=4, group_size=32, use_double_quant=True, double_quant_bits=6,
                         double_quant_use_sym=True, double_quant_group_size=4)
    if algorithm == "awq":
        return AWQConfig(bits=4, group_size=32)
    # GPTQ resolves model_path (for layer-wise loading) even when it does not load from it;
    # an existing local folder keeps it off the hub.
    if algorithm == "gptq":
        return GPTQConfig(bits=4, group_size=32, model_path=tempfile.gettempdir())
    if algorithm == "gptq-actorder":
        return GPTQConfig(bits=4, group_size=32, act_order=True, use_sym=False, model_path=tempfile.gettempdir())
    if algorithm == "teq":
        return TEQConfig(bits=4, group_size=32, use_sym=False, absorb_to_layer=teq_absorb_pairs(model, arch),
                         folding=True)
    raise ValueError(f"unknown algorithm {algorithm!r}")


ALGORITHMS = ("rtn", "rtn-sym8", "rtn-clip", "rtn-nf4", "rtn-fp4", "rtn-double-quant", "awq", "gptq",
              "gptq-actorder", "teq")


def quantize(model, algorithm, arch, substitute, teq_steps=3, absorb_backend="torchscript"):
    """Run the reference's ``prepare``/``convert`` for ``algorithm`` on a copy of ``model``.

    ``substitute``: inside ``nbwoq_torch.patch_reference(absorb_backend=absorb_backend)``.
    """
    from neural_compressor.torch.quantization import convert, prepare

    model = copy.deepcopy(model)
    batches = calibration_batches(vocab=model.config.vocab_size)
    config = make_config(algorithm, model, arch)
    with contextlib.ExitStack() as stack:
        if substitute:
            stack.enter_context(nbwoq_torch.patch_reference(absorb_backend=absorb_backend))
        if algorithm.startswith("rtn"):
            return convert(prepare(model, config))
        prepared = prepare(model, config, example_inputs=batches[0])
        if algorithm == "teq":
            _teq_train(batches, teq_steps)(prepared)
        else:
            _calibrate(batches)(prepared)
        return convert(prepared)


def reference_absorb_layers(model, arch):
    """What the reference's own ``get_absorb_layers`` finds on ``model`` (unsubstituted)."""
    from neural_compressor.torch.algorithms.weight_only import utility

    return utility.get_absorb_layers(model, calibration_batches(vocab=model.config.vocab_size)[0])


def quantized_state(model):
    """Every tensor of the quantized model (packed codes, scales, zero points, the rest)."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def differing(state_a, state_b):
    assert state_a.keys() == state_b.keys(), sorted(set(state_a) ^ set(state_b))
    return sorted(name for name in state_a if not torch.equal(state_a[name], state_b[name]))

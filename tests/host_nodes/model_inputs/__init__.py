"""A test-only node for host tests of packed latents (LTX-2's audio+video): it returns a clone of the MODEL whose every
plain model call (outside forward-mode passes, whose inputs are forward-AD duals or functorch-wrapped) appends the
call's timestep and input latent to a list saved with torch.save as output/<filename> after each call. The input
MODEL is not changed."""

import os

import torch

import folder_paths


class TestRecordModelInputs:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "filename": ("STRING", {"default": "model_inputs.pt"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "execute"
    CATEGORY = "testing"

    def execute(self, model, filename):
        path = os.path.join(folder_paths.get_output_directory(), filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        calls = []
        previous = model.model_options.get("model_function_wrapper")

        def record(apply_model, args):
            x = args["input"]
            forward_mode = torch._C._functorch.is_functorch_wrapped_tensor(x) or \
                torch.autograd.forward_ad.unpack_dual(x).tangent is not None
            if not forward_mode:
                calls.append({"timestep": args["timestep"].detach().float().cpu().clone(),
                              "input": x.detach().float().cpu().clone()})
                torch.save(calls, path)
            return previous(apply_model, args) if previous is not None else apply_model(
                args["input"], args["timestep"], **args["c"])

        clone = model.clone()
        clone.set_model_unet_function_wrapper(record)
        return (clone,)


NODE_CLASS_MAPPINGS = {"TestRecordModelInputs": TestRecordModelInputs}

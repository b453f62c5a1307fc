"""A test-only node for LTX-Video host tests: ComfyUI's LTXV transformer takes the text encoder's attention mask as a
required argument, which its own encoder (T5-XXL, CLIPLoader type 'ltxv') always returns and the tiny SD1.5
checkpoint's CLIP-L does not. This node adds the mask T5 would give a prompt without padding (every token kept)."""

import torch


class TestTextAttentionMask:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",)}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "execute"
    CATEGORY = "testing"

    def execute(self, conditioning):
        return ([[text, {**keys, "attention_mask": torch.ones(text.shape[:2], dtype=torch.long)}]
                 for text, keys in conditioning],)


NODE_CLASS_MAPPINGS = {"TestTextAttentionMask": TestTextAttentionMask}

"""The student's forward as the trainer runs it, the loss included, so that DDP and FSDP see every use
of a parameter inside one `forward` call.

    StudentForward(model, fused, autocast_dtype)(input_ids, attention_mask, DPDBatch, DPDLossConfig)
        fused (a plain LM head): hidden = decoder(x) (2B, L, H); fused_dpd_loss(hidden, head, batch)
        else:                    logits = model(x) (2B, L, V);   dpd_loss(logits, batch)
        -> DPDLossOutput; the model runs under autocast (bf16) when asked, the loss never does (it
           upcasts to float32 itself)
"""

from __future__ import annotations

from typing import Any

import torch

from dualdistill.trainer.distributed import autocast


class StudentForward(torch.nn.Module):
    """The module DDP wraps and FSDP takes as its root: the student model, and the loss of one batch."""

    def __init__(self, model: Any, fused: bool, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = model
        self.fused = fused and lm_head(model) is not None
        self.autocast_dtype = autocast_dtype

    @property
    def head(self) -> torch.nn.Linear | None:
        """The LM head the fused loss applies chunk by chunk (a property, not a second registered module,
        so that the head's parameters appear once in state dicts and parameter groups)."""
        return lm_head(self.model) if self.fused else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch: Any, config: Any) -> Any:
        from dualdistill.losses import dpd_loss, fused_dpd_loss

        head, device = self.head, input_ids.device
        with autocast(device, self.autocast_dtype):
            if head is None:
                out = self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (2B, L, V)
            else:
                decoder = self.model.get_decoder()
                out = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (2B, L, H)
        with torch.autocast(device_type=device.type, enabled=False):
            if head is None:
                return dpd_loss(out, batch, config)
            return fused_dpd_loss(out, head.weight, head.bias, batch, config)


def lm_head(model: Any) -> torch.nn.Linear | None:
    """The student's LM head when logits = head(decoder(x).last_hidden_state) exactly, else None (then the
    loss takes the model's logits): a plain nn.Linear, a decoder, no logit soft-capping or scaling."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = getattr(model, "config", None)
    plain = all(getattr(config, name, None) in (None, 1.0) for name in ("final_logit_softcapping", "logit_scale"))
    if type(head) is not torch.nn.Linear or not hasattr(model, "get_decoder") or not plain:
        return None
    return head

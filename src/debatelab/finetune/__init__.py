"""Self-fine-tuning after Taubenfeld et al. (2024), section 5, section 7 and appendix A.2.

``questions`` builds the interview questions (the paper's ten seeds plus model-written ones),
``answers`` has a partisan agent answer them into a JSONL dataset for SFT and DPO, ``sft`` and
``dpo`` train LoRA/QLoRA adapters (``devices`` picks the device and LoRA or QLoRA), ``benchmarks``
scores models with lm-eval, and ``study`` runs the whole study from a ``study_config`` into
``table1``; ``parties`` holds the two-party study (``party: both``: one adapter per party, each
partisan debating on its own) and ``party_adapter_seats`` for tools that seat its adapters.
Training imports torch/trl lazily, so importing this package stays cheap.
"""

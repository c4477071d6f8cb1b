"""Federated fine-tuning of a small pretrained language model with low-rank adapters (LoRA),
lesson 18: the course's pretrained character Transformer, LoRA layers and their arithmetic,
local training and FedAvg over adapters.

A facade: the public names of the course's API, re-exported from fedutils' layers
(docs/architecture.md): the model from `fedutils.core.transformer`, LoRA and the federated
loop from `fedutils.techniques.lora`."""
from fedutils.core.transformer import (CharVocabulary, TransformerConfig,
                                       create_char_transformer, generate, join_texts,
                                       load_pretrained, named_weights, new_word_mask,
                                       next_char_metrics, num_parameters, per_position_metrics,
                                       play_of, pretraining_corpus, projection_names,
                                       set_named_weights, shakespeare_genres, split_lines,
                                       windows, words_of)
from fedutils.techniques.lora import (LocalTrainer, LoRADense, adapter_weights,
                                      create_lora_transformer, draw_batches,
                                      factor_averaging_gap, initial_adapters, lora_delta,
                                      lora_forward, lora_layers, merge_kernel, merge_lora,
                                      merged_weights, run_federated_finetuning,
                                      set_adapter_weights, train_locally, weights_bytes)

__all__ = [
    # the pretrained model (fedutils.core.transformer)
    "CharVocabulary", "TransformerConfig", "create_char_transformer", "load_pretrained",
    "named_weights", "set_named_weights", "num_parameters", "projection_names", "windows",
    "split_lines", "join_texts", "words_of", "new_word_mask", "next_char_metrics",
    "per_position_metrics", "generate", "shakespeare_genres", "play_of", "pretraining_corpus",
    # LoRA and federated fine-tuning (fedutils.techniques.lora)
    "LoRADense", "lora_forward", "lora_delta", "merge_kernel", "create_lora_transformer",
    "lora_layers", "adapter_weights", "set_adapter_weights", "initial_adapters", "merge_lora",
    "merged_weights", "factor_averaging_gap", "LocalTrainer", "run_federated_finetuning",
    "train_locally", "draw_batches", "weights_bytes",
]

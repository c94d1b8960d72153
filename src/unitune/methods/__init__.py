"""Fine-tuning methods (registry, bottleneck adapters, lean LoRA dropout) and the file names of
a saved adapter: PEFT's, shared by every method so that module arithmetic reads them all."""

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
INIT_FILE = "adapter_init.safetensors"  # the adapter before training, for shared inits

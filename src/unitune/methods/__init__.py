"""Fine-tuning methods: the registry (``base``), the methods PEFT implements
(``peft_methods``), bottleneck adapters (``bottleneck``), full and partial fine-tuning
(``whole``), and the lean LoRA dropout (``lean_dropout``). Importing the package registers every
method; ``get(name)`` returns one."""

# (registration order is the order methods are listed in: PEFT's first)
from unitune.methods import peft_methods, bottleneck, whole  # noqa: F401, I001
from unitune.methods.base import (  # noqa: F401
    CONFIG_FILE,
    INIT_FILE,
    WEIGHTS_FILE,
    Method,
    all_methods,
    config_sections,
    get,
    names,
)

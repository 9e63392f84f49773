"""Every list of named choices, defined once.

Config validation, the samplers' and schedules' registries, the commands'
enum flags and the docs all read these tuples. Plain Python: importing this
module loads no JAX, so a command can build its flags from it cheaply.
"""

# What a config trains (config.task).
TASKS = ('diffusion', 'autoencoder')

# Noise schedules (schedules.BETA_SCHEDULES is keyed by these).
SCHEDULES = ('linear', 'cosine', 'sigmoid', 'scaled_linear', 'trained')
# What the UNet predicts, and how the loss is weighted per timestep.
PREDICTIONS = ('eps', 'x0', 'v')
LOSS_WEIGHTINGS = ('none', 'min_snr')

# Samplers (samplers.SAMPLERS is keyed by these), in menu order.
SAMPLERS = ('ddpm', 'ddim', 'dpm++2m', 'euler', 'euler_a', 'heun', 'dpm2')
# The samplers that run on a σ grid, and so take spacing 'karras'.
SIGMA_SAMPLERS = ('dpm++2m', 'euler', 'euler_a', 'heun', 'dpm2')
# Timestep spacings of a respaced grid; 'karras' is Karras et al.'s σ spacing.
TIMESTEP_SPACINGS = ('uniform', 'leading', 'trailing')
SPACINGS = TIMESTEP_SPACINGS + ('karras',)
# The reverse process's variance: β ('fixedlarge') or β̃ ('fixedsmall').
VAR_TYPES = ('fixedlarge', 'fixedsmall')

# Parameter and activation dtypes of the networks.
DTYPES = ('float32', 'bfloat16', 'float16')
# How images reach data.image_size: resized, or centred on black ('pad').
RESIZE_MODES = ('bilinear', 'pad')
# Where a folder's (or a mixed-size TFDS dataset's) images are cropped after
# their shorter side is resized to data.image_size.
CROPS = ('center', 'random')
# Image channels the models take.
CHANNELS = (1, 3)
# A text model's one vector for the whole prompt ('' : none).
TEXT_POOLS = ('attention', 'mean', '')
# Caption languages (captions.py).
LANGUAGES = ('en', 'es')

# Training.
LR_DECAYS = ('none', 'cosine')
NAN_POLICIES = ('stop', 'skip')
AUTOENCODER_LOSSES = ('l1', 'l2')

# The embedded MNIST-5k (data.py): its name and splits, all 5,000 images or
# the 4,000 outside the LeNet judge's held-out 100 per class.
EMBEDDED_DATASET = 'mnist5k'
EMBEDDED_SPLITS = ('train', 'train_minus_heldout')

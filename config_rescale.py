"""Settings for RescaleDataset.py and the training scripts.

Edit the values below, or override any of them on the command line (`python RescaleDataset.py --help`).
Relative paths are resolved against the folder of this file. To use another configuration, copy this
file and set the environment variable RESCALE_CONFIG to the path of the copy.
"""

# Dataset to rescale: 'ImageNet', 'Places365', 'FashionMNIST' (the offline demo) or 'ImageFolder'.
DataRescale = 'ImageNet'

# ImageNet (ILSVRC2012): `root` contains train/<wnid>/ and val/ in any layout listed in README.md.
ImageNet = dict(
    root='data/ImageNet',                # dataset root, read only
    results='Result_Rescaled_ImageNet',  # validation outcomes, statistics, class lists and reports
    subsets='data/Rescaled_ImageNet',    # ReIN<N>/train and ReIN<N>/val are built here
    prefix='ReIN',                       # subset names are prefix + number of classes
    sizes=[30, 50, 100, 150, 200],       # number of classes of each subset
    model='resnet50',                    # torchvision model name, 'efficientnet_lite0', or a checkpoint path
    weights='IMAGENET1K_V2',             # torchvision weights name, or a checkpoint path for `model`
)

# Places365-Standard: the "easy format" (train/, val/) or the original one (data_256/, val_256/).
Places365 = dict(
    root='data/Places365',
    results='Result_Rescaled_Places365',
    subsets='data/Rescaled_Places365',
    prefix='RePL',
    sizes=[30, 50],
    model='resnet50',
    weights='data/resnet50_places365.pth.tar',  # CSAIL checkpoint, see README.md
)

# Fashion-MNIST demo: written as an ImageFolder tree under `root` on first use, with its own small CNN.
FashionMNIST = dict(
    root='data/FashionMNIST',
    results='Result_Rescaled_FashionMNIST',
    subsets='data/Rescaled_FashionMNIST',
    prefix='ReFM',
    sizes=[4, 6],
    model='fashion_mnist_cnn',
    weights='Result_Rescaled_FashionMNIST/network/fashion_mnist_cnn.pth',  # trained on first use
)

# Any dataset with train/<class>/ and val/<class>/ folders; `model` must know the folder names.
ImageFolder = dict(
    root='data/ImageFolder',
    results='Result_Rescaled_ImageFolder',
    subsets='data/Rescaled_ImageFolder',
    prefix='Re',
    sizes=[10, 20],
    model='resnet50',
    weights='IMAGENET1K_V2',
)

# Validation pass
batch_size = 64      # images per forward pass and process
workers = 4          # DataLoader worker processes per process
device = 'auto'      # 'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'
topk = 10            # predictions kept per image

# Selection
strategy = 'sensitive-confused'  # 'sensitive-confused' (the method), 'lowest-accuracy' or 'random'
min_pair_share = 0.12            # a confused class joins when pair errors >= this share of the class's images
seed = 0                         # seed of the 'random' strategy and of the random baselines in reports
random_baselines = 100           # random subsets per size that each report compares against

# Building subsets
mode = 'copy'        # 'copy', 'hardlink' (falls back to copy across file systems) or 'symlink'

"""Write the embedded synthetic segmentation dataset (ADE20K layout) for the demo configs.

    python tools/make_synthetic_dataset.py [ROOT] [--train 200] [--val 40] [--size 128]
    python tools/train.py configs/demo/segformer_mit-b0_featup-jbu_synthetic-128x128.py
"""
import argparse

from featup_mmseg.datasets import generate_synthetic_shapes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('root', nargs='?', default='data/synthetic_shapes')
    parser.add_argument('--train', type=int, default=200, help='training images')
    parser.add_argument('--val', type=int, default=40, help='validation images')
    parser.add_argument('--size', type=int, default=128, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    root = generate_synthetic_shapes(args.root, args.train, args.val, args.size, args.seed)
    print(f'synthetic dataset in {root}')


if __name__ == '__main__':
    main()

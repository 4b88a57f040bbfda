"""Fashion-MNIST: the same network and training as mnist.py, on photos of clothes.

    python examples/fashion_mnist.py [--data-dir DIR] [--download] [--epochs 2] [--limit N]

The files have MNIST's format and sizes; the data dir defaults to where the library
looks: $NBNET_DATA_DIR/fashion-mnist, else ~/.cache/nbnet/fashion-mnist. Harder than digits: shirts, T-shirts,
pullovers and coats get mixed up, as the confusion matrix shows.
"""

from mnist import main  # examples/mnist.py: everything but the data set and the class names

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

if __name__ == "__main__":
    main("fashion-mnist", CLASSES)

"""A small LeNet-like model shared by the compression tests (also copied, as source, into
the folder of the command-line tests' saved models)."""

import torch


class Net(torch.nn.Module):
    """A small LeNet-like model: two convs, three linear layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 4, 3)
        self.conv2 = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 6 * 6, 64)
        self.head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(64, 32),
                                        torch.nn.ReLU(), torch.nn.Linear(32, 10))

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.relu(self.conv2(x))
        return self.head(self.fc(x.flatten(1)))

"""gq-tf: sub-8-bit General Quantizer QAT for tf_keras/tfmot, exported to TFLite."""

from setuptools import find_packages, setup

setup(
    name="gq-tf",
    version="0.1.0",
    description=(
        "General Quantizer (learned mu-law codebooks, softmax annealing) for "
        "tf_keras + tensorflow-model-optimization QAT, down to 1 bit"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["gq_tf", "gq_tf.*", "converters", "converters.*",
                                    "android_bench", "android_bench.*"]),
    install_requires=[
        # Pins measured to work together (DESIGN.md): ask for `tensorflow`, not
        # `tensorflow-cpu`, because tf-keras depends on the former.
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "tensorflow-model-optimization==0.8.*",
        "numpy>=1.26",
    ],
    extras_require={"test": ["pytest>=8", "pytest-timeout"]},
    entry_points={"console_scripts": ["gq-tf=gq_tf.cli:main"]},
)

from pathlib import Path

from setuptools import find_packages, setup

readme = Path(__file__).with_name("README.md")

setup(
    name="ann_seg",
    version="0.2.0",
    description="Asymmetric non-local networks and the non-local block family for mmseg 1.x",
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["ann_seg", "ann_seg.*"]),  # research/ stays in the repo
    # the configs (mmseg's .mim convention: ann_seg::<folder>/<file>.py)
    package_data={
        "ann_seg": [
            ".mim/model-index.yml",
            "mmseg/model_zoo.json",  # mmseg's published ANN/NonLocal models (ann-seg models)
            ".mim/configs/*.py",
            ".mim/configs/*/*.py",
            ".mim/configs/*/*/*.py",
        ]
    },
    include_package_data=False,
    entry_points={"console_scripts": ["ann-seg = ann_seg.tools:main"]},
    install_requires=[
        "torch>=2.1,<2.14",  # mmcv 2.1.0 builds with C++17; torch 2.14 headers need C++20
        "mmengine==0.10.7",
        "mmcv==2.1.0",
        "mmsegmentation==1.2.2",
        "opencv-python>=4.8,<5",  # mmseg 1.2.2 browse_dataset breaks on OpenCV 5
        "ftfy",
        "regex",
        "numpy",
        "matplotlib",
        "rich",
        "tifffile",  # images beyond what OpenCV decodes, read in rows (ann_seg.io.large_images)
    ],
    extras_require={
        # ann-seg prepare-data cityscapes (polygons -> train ids), test --metric cityscapes
        "cityscapes": ["cityscapesscripts"],
        # LZW/JPEG-compressed TIFFs read in rows; videos OpenCV cannot read, reproducible files
        "large": ["imagecodecs"],
        "video": ["av>=18"],
        # ann-seg infer --backend onnxruntime|openvino MODEL.onnx (no torch needed at run time)
        "onnxruntime": ["onnxruntime"],
        "openvino": ["openvino"],
        "dev": [
            "pytest>=7",
            "pytest-xdist",
            "ruff",
            "import-linter",
            "onnx",
            "onnxruntime",
            "onnxscript",
            "openvino",
            "av",
            "scikit-image",
            "scipy",  # research/: the head study's confidence intervals
        ],
    },
    license="Apache-2.0",
)

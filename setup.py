from pathlib import Path

from setuptools import find_packages, setup

readme = Path(__file__).with_name('README.md')

setup(
    name='ann_seg',
    version='0.1.0',
    description='Asymmetric non-local networks and the non-local block family for mmseg 1.x',
    long_description=readme.read_text(encoding='utf-8') if readme.exists() else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['ann_seg', 'ann_seg.*']),
    install_requires=[
        'torch>=2.1',
        'mmengine==0.10.7',
        'mmcv==2.1.0',
        'mmsegmentation==1.2.2',
        'opencv-python',
        'ftfy',
        'regex',
        'numpy',
        'matplotlib',
        'rich',
    ],
    extras_require={
        'dev': ['pytest>=7', 'ruff', 'onnx', 'onnxruntime', 'onnxscript', 'scikit-image'],
    },
    license='Apache-2.0',
)

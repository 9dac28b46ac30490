"""Deploying a NORM student: the folded model, its ONNX export checked by ONNX Runtime, and its cost.

A student's eval-mode feature transform (FT) is an affine map per pixel (`NormTransform.as_affine`). Where the FT
feeds global average pooling and the linear classifier directly it folds into the classifier and the deployed
model is the plain architecture; elsewhere (WRN: FT -> BN -> ReLU -> pool) it is kept as one 1x1 convolution.
Every export is compared with the student as trained, on images in the dataset's real test format, and refused
when it differs beyond the tolerances of `verify`. The parts: fold.py, onnx_export.py, cost.py, verify.py; their
public names are gathered here (`from helper import deploy; deploy.onnx_bytes(...)`).
"""
from helper.deploy.cost import cost_rows, cost_table, flop_count, parameter_count, si_number
from helper.deploy.fold import AffineTransform, Deployed, deployed_student
from helper.deploy.onnx_export import (INPUT_NAME, OPSET, OUTPUT_NAME, LogitsOnly, OnnxStudent, check_onnx, onnx_bytes,
                                       onnx_metadata, onnx_session, run_session)
from helper.deploy.verify import (FOLD_TOLERANCE, ONNX_TOLERANCE, VERIFY_IMAGES, VERIFY_SEED, Check, compare, describe,
                                  eval_transform, input_dataset, relative_difference, require, verification_batch,
                                  verification_images)

__all__ = ["AffineTransform", "Check", "Deployed", "FOLD_TOLERANCE", "INPUT_NAME", "LogitsOnly", "ONNX_TOLERANCE",
           "OPSET", "OUTPUT_NAME", "OnnxStudent", "VERIFY_IMAGES", "VERIFY_SEED", "check_onnx", "compare",
           "cost_rows", "cost_table", "describe", "deployed_student", "eval_transform", "flop_count", "input_dataset",
           "onnx_bytes", "onnx_metadata", "onnx_session", "parameter_count", "relative_difference", "require",
           "run_session", "si_number", "verification_batch", "verification_images"]

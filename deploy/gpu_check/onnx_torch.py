"""A minimal ONNX interpreter in torch for the node's four models, so gpu_check.py can run them on
a CUDA GPU in FP32 and FP16 without TensorRT or onnxruntime-gpu. Only the operators those graphs
use; anything else raises NotImplementedError."""

import numpy as np
import onnx
import onnx.numpy_helper as nh
import torch
import torch.nn.functional as F


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class Runner:
    def __init__(self, path, device="cpu", dtype=torch.float32):
        self.model = onnx.load(path)
        self.device, self.dtype = device, dtype
        self.init = {}
        for t in self.model.graph.initializer:
            a = nh.to_array(t)
            self.init[t.name] = torch.from_numpy(a.copy()).to(
                device, dtype if a.dtype == np.float32 else None
            )

    def fl(self, x):
        return x.to(self.dtype) if torch.is_floating_point(x) else x

    def __call__(self, **inputs):
        env = dict(self.init)
        for k, v in inputs.items():
            env[k] = self.fl(torch.as_tensor(v).to(self.device))
        for n in self.model.graph.node:
            a = attrs(n)
            x = [env[i] if i else None for i in n.input]
            op = n.op_type
            if op == "Constant":
                v = nh.to_array(a["value"])
                y = torch.from_numpy(v.copy()).to(self.device)
                y = self.fl(y)
            elif op == "Conv":
                pads = a.get("pads", [0, 0, 0, 0])
                assert pads[0] == pads[2] and pads[1] == pads[3]
                y = F.conv2d(
                    x[0],
                    x[1],
                    x[2] if len(x) > 2 else None,
                    stride=a.get("strides", [1, 1]),
                    padding=pads[:2],
                    dilation=a.get("dilations", [1, 1]),
                    groups=a.get("group", 1),
                )
            elif op == "Relu":
                y = F.relu(x[0])
            elif op == "Sigmoid":
                y = torch.sigmoid(x[0])
            elif op == "Exp":
                y = torch.exp(x[0])
            elif op in ("Add", "Sub", "Mul", "Div"):
                y = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](
                    x[0], x[1]
                )
                if not torch.is_floating_point(x[0]) and op == "Div":
                    y = torch.div(x[0], x[1], rounding_mode="floor")
            elif op == "Clip":
                lo = x[1] if len(x) > 1 and x[1] is not None else None
                hi = x[2] if len(x) > 2 and x[2] is not None else None
                y = torch.clamp(
                    x[0],
                    lo.item() if lo is not None else None,
                    hi.item() if hi is not None else None,
                )
            elif op == "Concat":
                y = torch.cat(x, dim=a["axis"])
            elif op == "Shape":
                y = torch.tensor(x[0].shape, dtype=torch.int64, device=self.device)
            elif op == "Gather":
                idx = x[1]
                y = torch.index_select(x[0], a.get("axis", 0), idx.reshape(-1)).reshape(
                    tuple(x[0].shape[: a.get("axis", 0)])
                    + tuple(idx.shape)
                    + tuple(x[0].shape[a.get("axis", 0) + 1 :])
                )
            elif op == "Unsqueeze":
                axes = x[1].tolist() if len(x) > 1 else a["axes"]
                y = x[0]
                for ax in sorted(axes):
                    y = y.unsqueeze(ax)
            elif op == "Cast":
                to = a["to"]
                y = x[0].to(
                    {
                        1: self.dtype,
                        7: torch.int64,
                        6: torch.int32,
                        9: torch.bool,
                        10: torch.float16,
                        11: torch.float64,
                    }[to]
                )
            elif op == "Reshape":
                shape = [int(s) for s in x[1].tolist()]
                shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
                y = x[0].reshape(shape)
            elif op == "Resize":
                scales = x[2] if len(x) > 2 and x[2] is not None and x[2].numel() else None
                sizes = x[3] if len(x) > 3 and x[3] is not None else None
                assert a.get("mode", b"nearest") in (b"nearest", "nearest")
                if sizes is not None:
                    y = F.interpolate(
                        x[0], size=[int(s) for s in sizes.tolist()[2:]], mode="nearest"
                    )
                else:
                    y = F.interpolate(
                        x[0], scale_factor=[float(s) for s in scales.tolist()[2:]], mode="nearest"
                    )
            elif op == "ReduceMean":
                axes = a.get("axes") or x[1].tolist()
                y = x[0].mean(dim=axes, keepdim=bool(a.get("keepdims", 1)))
            elif op == "ReduceL2":
                axes = a.get("axes") or x[1].tolist()
                y = torch.sqrt(
                    (x[0].float() ** 2).sum(dim=axes, keepdim=bool(a.get("keepdims", 1)))
                ).to(x[0].dtype)
            elif op == "Gemm":
                A, B = x[0], x[1]
                if a.get("transA", 0):
                    A = A.t()
                if a.get("transB", 0):
                    B = B.t()
                y = a.get("alpha", 1.0) * A @ B + (a.get("beta", 1.0) * x[2] if len(x) > 2 else 0)
            elif op == "MatMul":
                y = x[0] @ x[1]
            elif op == "Slice":
                starts, ends = x[1].tolist(), x[2].tolist()
                axes = x[3].tolist() if len(x) > 3 else list(range(len(starts)))
                steps = x[4].tolist() if len(x) > 4 else [1] * len(starts)
                y = x[0]
                for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
                    dim = y.shape[ax]
                    if st == -1 and s in (-1, dim - 1) and e <= -dim - 1:  # the whole axis reversed (torch.flip)
                        y = y.flip(ax)
                        continue
                    e = min(e, dim) if e >= 0 else dim + e
                    s = s if s >= 0 else dim + s
                    y = y.narrow(ax, s, e - s)[(slice(None),) * ax + (slice(None, None, st),)]
            elif op == "Expand":
                y = x[0].expand(*torch.broadcast_shapes(x[0].shape, tuple(x[1].tolist())))
            elif op == "Max":
                y = torch.maximum(x[0], x[1])
            elif op == "Flatten":
                y = x[0].flatten(a.get("axis", 1))
            else:
                raise NotImplementedError(op)
            env[n.output[0]] = y
        return {o.name: env[o.name] for o in self.model.graph.output}

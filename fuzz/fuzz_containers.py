"""Fuzz SerializeData against bytearray and SecureString against str, operation by operation.

Run: python fuzz/fuzz_containers.py -runs=100000 (any libFuzzer flag works).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from bitcoin_support import SecureString, SerializeData


@atheris.instrument_func
def check_serialize(fdp: atheris.FuzzedDataProvider) -> None:
    """Every operation gives the same bytes as bytearray does."""
    model = bytearray()
    with SerializeData() as sd:
        for _ in range(fdp.ConsumeIntInRange(0, 40)):
            op = fdp.ConsumeIntInRange(0, 8)
            data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
            a = fdp.ConsumeIntInRange(-80, 80)
            b = fdp.ConsumeIntInRange(-80, 80)
            if op == 0:
                sd.extend(data)
                model.extend(data)
            elif op == 1:
                sd.append(abs(a) % 256)
                model.append(abs(a) % 256)
            elif op == 2:
                sd[a:b] = data
                model[a:b] = data
            elif op == 3:
                del sd[a:b]
                del model[a:b]
            elif op == 4:
                n = abs(a) * 3
                sd.resize(n)
                model[n:] = b""
                model.extend(bytes(n - len(model)))
            elif op == 5:
                sd.clear()
                model.clear()
            elif op == 6 and model:
                i = a % len(model)
                sd[i] = abs(b) % 256
                model[i] = abs(b) % 256
            elif op == 7:
                sd.reserve(abs(a))
                assert sd.capacity >= len(sd) + abs(a)
            elif op == 8:
                step = (abs(b) % 3) + 1
                assert sd[a::step] == bytes(model[a::step])
            assert bytes(sd) == bytes(model)
            assert len(sd) == len(model)


@atheris.instrument_func
def check_secure_string(fdp: atheris.FuzzedDataProvider) -> None:
    """push_str, push, pop and clear give the same text as str does."""
    model = ""
    with SecureString() as s:
        for _ in range(fdp.ConsumeIntInRange(0, 30)):
            op = fdp.ConsumeIntInRange(0, 3)
            if op == 0:
                text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 20))
                s.push_str(text)
                model += text
            elif op == 1:
                raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 20))
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    try:
                        s.push_str(raw)
                    except ValueError:
                        continue
                    raise AssertionError("invalid UTF-8 accepted") from None
                s.push_str(raw)
                model += text
            elif op == 2 and model:
                assert s.pop() == model[-1]
                model = model[:-1]
            elif op == 3:
                s.clear()
                model = ""
            assert s == model
            assert len(s) == len(model.encode())


@atheris.instrument_func
def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        check_serialize(fdp)
    else:
        check_secure_string(fdp)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()

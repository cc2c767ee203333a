"""firmware/protocol.py: framing against PyPI cobs + zlib, payload layouts, malformed input, docs in sync."""
import dataclasses
import re
import zlib
from pathlib import Path

import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from echoboard.firmware import protocol as p
from echoboard.golden_model.formats import FixedFormat, HRUSize
from echoboard.hdl import address_map

DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

seqs = st.integers(0, 255)
commands = st.sampled_from(list(p.Command))
payloads = st.binary(max_size=p.MAX_REQUEST_PAYLOAD)


def requests():
    return st.builds(p.Request, seqs, commands, payloads)


@st.composite
def configs(draw):
    """Small random cores with random (valid) formats."""
    fmt = FixedFormat(state_width=draw(st.integers(8, 32)), input_width=draw(st.integers(2, 24)),
                      input_frac=draw(st.integers(0, 8)), coef_width=draw(st.integers(2, 25)),
                      coef_b_frac=draw(st.integers(20, 30)), state_frac=draw(st.integers(0, 7)),
                      acc_width=draw(st.integers(16, 64)), counter_width=draw(st.integers(1, 40)),
                      epsilon_log2=draw(st.integers(-8, 0)), drift_rounding=draw(st.sampled_from(["half_away", "floor"])))
    size = HRUSize(draw(st.integers(1, 12)), draw(st.integers(1, 6)), draw(st.integers(1, 2**32 - 1)))
    return p.CoreConfig(size, fmt, draw(st.integers(1, 4)), p.Capability(draw(st.integers(0, 1))),
                        draw(st.binary(min_size=p.BUILD_HASH_BYTES, max_size=p.BUILD_HASH_BYTES)))


def words(field: p.Field, count: int):
    lo, hi = (-(1 << (field.width - 1)), (1 << (field.width - 1)) - 1) if field.signed else (0, (1 << field.width) - 1)
    return st.lists(st.integers(lo, hi), min_size=count, max_size=count)


@st.composite
def layout_values(draw, layout: p.Layout):
    steps = draw(st.integers(1, max(1, min(4, layout.max_steps(p.MAX_REQUEST_PAYLOAD))))) if layout.step_fields else 0
    values = {}
    for f in layout.fields:
        v = draw(words(f, f.count * (steps if f.per_step else 1)))
        values[f.name] = v[0] if f.count == 1 and not f.per_step else v
    return values


# ---------------------------------------------------------------- frames


@given(requests())
def test_request_round_trip_matches_cobs_and_zlib(req):
    wire = req.encode()
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    frame = cobs.decode(wire[:-1])
    assert frame[:2] == bytes([req.seq, req.cmd]) and frame[2:-4] == req.payload
    assert int.from_bytes(frame[-4:], "little") == zlib.crc32(frame[:-4])
    assert p.Request.decode(wire) == req
    assert len(wire) <= p.MAX_WIRE_BYTES


@given(seqs, seqs, st.integers(0, 255), st.binary(max_size=p.MAX_REPLY_PAYLOAD))
def test_reply_round_trip(seq, cmd, status, payload):
    reply = p.Reply(seq, cmd, status, payload)
    assert p.Reply.decode(reply.encode()) == reply


@given(requests(), st.data())
def test_any_single_bit_flip_is_a_frame_error(req, data):
    wire = bytearray(req.encode()[:-1])
    bit = data.draw(st.integers(0, 8 * len(wire) - 1))
    wire[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(p.FrameError):
        p.decode_frame(bytes(wire))


@given(requests(), st.data())
def test_any_truncation_is_a_frame_error(req, data):
    wire = req.encode()[:-1]
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(p.FrameError) as exc:
        p.decode_frame(wire[:cut])
    assert exc.value.status in (p.Status.TRUNCATED, p.Status.BAD_CRC)


def test_malformed_frames_get_the_boards_status():
    good = p.Request(1, p.Command.STATUS).encode()
    cases = {
        good[:3] + bytes([good[3] ^ 1]) + good[4:]: p.Status.BAD_CRC,
        b"\x05\x01\x02": p.Status.TRUNCATED,  # COBS block runs past the end
        cobs.encode(b"\x01\x02\x03"): p.Status.TRUNCATED,  # shorter than seq+cmd+crc
        b"\x01": p.Status.TRUNCATED,  # decodes to nothing
        good[:4] + b"\x00" + good[4:]: p.Status.TRUNCATED,  # delimiter inside
        cobs.encode(bytes(p.MAX_FRAME_BYTES + 1)): p.Status.OVERSIZED,
    }
    for wire, status in cases.items():
        with pytest.raises(p.FrameError) as exc:
            p.Request.decode(wire)
        assert exc.value.status == status, wire[:10]


def test_limits_and_request_errors():
    assert p.MAX_REQUEST_PAYLOAD == p.RX_BUFFER_BYTES - 6 and p.MAX_REPLY_PAYLOAD == p.RX_BUFFER_BYTES - 7
    biggest = p.Request(0, p.Command.WRITE, bytes(range(256)) * 4)
    with pytest.raises(p.OversizedFrame):
        biggest.encode()
    assert len(p.Request(0, 1, bytes(p.MAX_REQUEST_PAYLOAD)).encode()) <= p.MAX_WIRE_BYTES
    with pytest.raises(p.UnknownCommand) as exc:
        p.Request.decode(p.Request(3, 0x7E).encode())
    assert exc.value.status == p.Status.UNKNOWN_COMMAND
    with pytest.raises(ValueError):
        p.Request(256, 1).encode()
    with pytest.raises(p.BoardError, match="WRONG_STATE to FORWARD_DATA"):
        p.Reply(4, p.Command.FORWARD_DATA, p.Status.WRONG_STATE).check()
    assert p.Reply(4, 1, 0, b"x").check().payload == b"x"
    assert [s for s in p.Status if s.retry] == [p.Status.BAD_CRC, p.Status.TRUNCATED, p.Status.OVERSIZED]


@given(st.integers(0, 3000))
def test_cobs_max_encoded_is_tight(n):
    assert len(cobs.encode(b"\x01" * n)) == p.cobs_max_encoded(n)
    assert len(cobs.encode(bytes(n))) <= p.cobs_max_encoded(n)


@given(st.lists(requests(), min_size=1, max_size=5), st.lists(st.integers(1, 400), max_size=10))
@settings(max_examples=50)
def test_deframer_reassembles_any_split(reqs, cuts):
    stream = b"\x00" + b"\x00".join(r.encode() for r in reqs)
    deframer, frames, pos = p.Deframer(), [], 0
    for cut in cuts + [len(stream)]:
        frames += deframer.feed(stream[pos:pos + cut])
        pos += cut
    frames += deframer.feed(stream[pos:])
    assert [p.Request.decode(f) for f in frames] == reqs


def test_deframer_bounds_garbage():
    deframer = p.Deframer(limit=100)
    assert deframer.feed(b"\x07" * 5000) == []
    (frame,) = deframer.feed(b"\x07" * 10 + b"\x00")
    assert len(frame) == 100
    with pytest.raises(p.FrameError):
        p.decode_frame(frame)


# ---------------------------------------------------------------- words and layouts


@given(st.integers(1, 64), st.booleans(), st.data())
def test_words_round_trip_and_sign_extension(width, signed, data):
    f = p.Field("w", width, signed)
    values = data.draw(words(f, data.draw(st.integers(0, 8))))
    packed = p.pack_words(values, width, signed)
    assert len(packed) == len(values) * ((width + 7) // 8)
    assert p.unpack_words(packed, width, signed) == values
    for v in values:  # little-endian, sign-extended to whole bytes
        assert p.pack_words([v], width, signed) == v.to_bytes((width + 7) // 8, "little", signed=signed)


def test_words_reject_bad_values_and_bytes():
    with pytest.raises(ValueError, match="does not fit"):
        p.pack_words([1 << 17], 18)
    with pytest.raises(ValueError):
        p.pack_words([-1], 8, signed=False)
    with pytest.raises(p.ProtocolError, match="not a 18-bit"):
        p.unpack_words((1 << 17).to_bytes(3, "little"), 18)  # bit 17 set without sign extension
    with pytest.raises(p.PayloadLengthError):
        p.unpack_words(b"\x00" * 4, 18)


@settings(max_examples=40, deadline=None)
@given(configs(), st.data())
def test_every_layout_round_trips_and_rejects_wrong_lengths(config, data):
    m = p.Messages(config)
    layouts = [m.request(cmd, region=region, mode=mode) for cmd in p.Command for region in p.Region
               for mode in p.EchoMode]
    layouts += [m.reply(cmd, region=region, count=count, final=final) for cmd in p.Command for region in p.Region
                for count in (1, 3) for final in (False, True)]
    for layout in {lay.name + str(lay.fields): lay for lay in layouts}.values():
        values = data.draw(layout_values(layout))
        payload = layout.pack(**values)
        assert len(payload) == layout.size(layout.steps(len(payload)))
        assert layout.unpack(payload) == values
        for bad in (len(payload) + 1, len(payload) - 1):
            if bad >= 0 and not (layout.step_bytes and (bad - layout.fixed_bytes) % layout.step_bytes == 0
                                 and bad > layout.fixed_bytes):
                with pytest.raises(p.PayloadLengthError):
                    layout.unpack(bytes(bad))


def test_per_step_fields_are_interleaved_step_by_step():
    config = p.CoreConfig(HRUSize(2, 3, 100), FixedFormat(), capabilities=p.Capability.ECHO_STREAM)
    layout = p.Messages(config).echo_data(p.EchoMode.STREAM)
    payload = layout.pack(offset=7, inputs=[1, 2, 3, 4, 5, 6], nudges=[-1, -2, -3, -4])
    assert payload == (p.pack_words([7], 32, False) + p.pack_words([1, 2, 3], 16) + p.pack_words([-1, -2], 32)
                       + p.pack_words([4, 5, 6], 16) + p.pack_words([-3, -4], 32))
    with pytest.raises(ValueError, match="same whole number"):
        layout.pack(offset=0, inputs=[1, 2, 3], nudges=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="per-step fields must come last"):
        p.Layout("bad", (p.Field("x", 8, per_step=True), p.u8("y")))


@settings(max_examples=30, deadline=None)
@given(configs())
def test_identify_round_trip(config):
    assert p.unpack_identify(p.Messages(config).pack_identify()) == config


def test_identify_rejects_other_versions_and_lists_every_format_field():
    m = p.Messages(p.CoreConfig())
    with pytest.raises(p.ProtocolError, match="protocol 9"):
        p.unpack_identify(m.pack_identify(version=9))
    with pytest.raises(p.PayloadLengthError):
        p.unpack_identify(m.pack_identify()[:-1])
    fields = {f.name for f in dataclasses.fields(FixedFormat)}
    assert set(p.FORMAT_FIELDS) == fields - {"drift_rounding"}  # a new format field needs a protocol change
    assert set(p.DRIFT_ROUNDING_CODES) == {"half_away", "floor"}


def test_nonlinear_identify_round_trip_and_format_fields():
    from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat
    from echoboard.golden_model.tanh_table import TanhSpec

    fmt = NonlinearFormat(base=FixedFormat(loss_scale_log2=3), tanh=TanhSpec(7, 3, 16), coef_w_frac=15,
                          acc_ty_shift=12)
    config = p.CoreConfig(HRUSize(5, 3, 999), fmt, 1, p.Capability.ECHO_STREAM, bytes(range(16)))
    assert config.hru == "nonlinear" and config.regions is p.NonlinearRegion and config.base == fmt.base
    assert p.unpack_identify(p.Messages(config).pack_identify()) == config
    fields = {f.name for f in dataclasses.fields(NonlinearFormat)}
    assert set(p.NONLINEAR_FORMAT_FIELDS) == fields - {"base", "tanh"}  # a new field needs a protocol change
    assert set(p.TANH_FIELDS) == {f.name for f in dataclasses.fields(TanhSpec)}
    linear = p.Messages(p.CoreConfig()).pack_identify()
    assert p.IDENTIFY_REPLY.unpack(linear)["hru"] == p.HRU_CODES["linear"] == 0
    with pytest.raises(p.ProtocolError, match="HRU kind code 7"):
        p.unpack_identify(linear[:p.IDENTIFY_V1_REPLY.size()] + bytes([7]) + linear[p.IDENTIFY_V1_REPLY.size() + 1:])


def test_identify_v1_and_v2_hosts_both_refuse_the_other_version_by_name():
    """A v1 host (empty request) gets version 1's 46-byte layout, saying 2; a v2 host reads a v1
    board's version before the length, so both refuse with the version, in one line."""
    m = p.Messages(p.CoreConfig())
    v1_reply = m.identify_reply(b"")
    assert len(v1_reply) == p.IDENTIFY_V1_REPLY.size() == 46 and m.pack_identify().startswith(v1_reply)
    assert p.IDENTIFY_V1_REPLY.unpack(v1_reply)["protocol_version"] == p.PROTOCOL_VERSION == 2
    assert m.identify_reply(p.identify_request()) == m.pack_identify()
    with pytest.raises(p.PayloadLengthError):
        m.identify_reply(b"\x02")
    with pytest.raises(p.ProtocolError, match="board speaks protocol 1, host 2"):
        p.unpack_identify(m.pack_identify(version=1)[:p.IDENTIFY_V1_REPLY.size()])


def test_write_read_checks_match_the_boards_errors():
    config = p.CoreConfig(HRUSize(16, 8, 1000))
    m = p.Messages(config)
    payload = m.pack_write(p.Region.B, 120, [-(1 << 17), (1 << 17) - 1, 5, 0, 0, 0, 0, 0])
    assert m.unpack_write(payload) == (p.Region.B, 120, [-(1 << 17), (1 << 17) - 1, 5, 0, 0, 0, 0, 0])
    assert m.unpack_read(m.pack_read(p.Region.ACC_B, 0, 127)) == (p.Region.ACC_B, 0, 127)
    assert m.max_words(p.Region.ACC_B) == 127 and m.max_words(p.Region.B, write=True) == 338
    failures = [
        (lambda: m.pack_write(p.Region.POS_SUM, 0, [1]), "read-only"),
        (lambda: m.pack_write(p.Region.A, 15, [1, 2]), "outside"),
        (lambda: m.pack_read(p.Region.COUNTERS, 0, 5), "outside"),
        (lambda: m.pack_read(p.Region.B, 0, 0), "outside"),
        (lambda: m.unpack_read(bytes([12, 0, 0, 1, 0])), "unknown region"),
        (lambda: m.pack_write(p.Region.A, 0, [1 << 17]), "does not fit"),
    ]
    for call, message in failures:
        with pytest.raises(ValueError, match=message) as exc:
            call()
        assert not isinstance(exc.value, p.PayloadLengthError)
    with pytest.raises(p.PayloadLengthError):
        m.unpack_write(bytes([0, 0, 0]) + b"\x01\x00")  # 2 bytes is no whole 3-byte word
    assert m.read_reply(p.Region.COUNTERS, 4).fields[0].signed is False


@settings(max_examples=20, deadline=None)
@given(configs(), st.integers(1, 300), st.sampled_from([None, p.EchoMode.CONSTANT, p.EchoMode.STREAM]), st.randoms())
def test_data_payloads_split_a_sequence_into_full_frames(config, length, mode, rng):
    m = p.Messages(config)
    f = config.fmt
    u = [[rng.randint(-(1 << (f.input_width - 1)), (1 << (f.input_width - 1)) - 1)
          for _ in range(config.size.inputs)] for _ in range(length)]
    n = [[rng.randint(-5, 5) for _ in range(config.size.oscillators)] for _ in range(length)]
    chunks = m.data_payloads(u, nudges=n, mode=mode)
    layout = m.forward_data if mode is None else m.echo_data(mode)
    per = layout.max_steps(p.MAX_REQUEST_PAYLOAD)
    assert len(chunks) == -(-length // per) and all(len(c) <= p.MAX_REQUEST_PAYLOAD for c in chunks)
    rows, nudges = [], []
    for chunk in chunks:
        v = layout.unpack(chunk)
        assert v["offset"] == len(rows) // config.size.inputs
        rows += v["inputs"]
        nudges += v.get("nudges", [])
    assert rows == [x for r in u for x in r]
    assert nudges == ([x for r in n for x in r] if mode == p.EchoMode.STREAM else [])


def test_default_core_limits():
    m = p.Messages(p.CoreConfig())  # P=16, N=8, 16-bit inputs, 32-bit state, 64-bit accumulators
    assert m.forward_data.max_steps(p.MAX_REQUEST_PAYLOAD) == 63
    assert m.echo_data(p.EchoMode.STREAM).max_steps(p.MAX_REQUEST_PAYLOAD) == 12
    assert m.forward_result.size() == 4 + 16 * 8 and m.echo_start.size() == 5 + 16 * 4
    with pytest.raises(ValueError, match="too large"):
        p.CoreConfig(HRUSize(200, 8))


def test_protocol_names_the_cores_parameters_and_accumulators_as_the_lanes_do():
    """The regions themselves are one table (hdl.regions); the host's name -> region maps restate the
    lanes' (the host side imports no Amaranth)."""
    from echoboard.hdl.hru_lane import HRULane
    from echoboard.hdl.hru_nonlinear import NonlinearLane

    assert p.Region is address_map.Region and HRULane.regions is p.LinearBlockRegion
    assert NonlinearLane.regions is p.NonlinearBlockRegion
    for kind, lane in (("linear", HRULane), ("nonlinear", NonlinearLane)):  # the same names and regions
        for ours, lanes in ((p.PARAMETERS[kind], lane.PARAMETERS), (p.ACCUMULATORS[kind], lane.ACCUMULATORS)):
            assert {k: int(v) for k, v in ours.items()} == {k: int(v) for k, v in lanes.items()}


def test_nonlinear_regions_widths_and_access():
    from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat

    config = p.CoreConfig(HRUSize(16, 8, 1000), NonlinearFormat())
    f, m = config.base, p.Messages(config)
    widths = {r.name: config.region_field(r).width for r in p.NonlinearRegion}
    assert {n for n, w in widths.items() if w == f.coef_width} == {"ALPHA", "B", "DELTA", "W", "BIAS", "SIGMA"}
    assert {n for n, w in widths.items() if w == f.acc_width} == {"POS_SUM", "ACC_YY", "ACC_TU", "ACC_T", "ACC_LC",
                                                                  "ACC_TY"}
    assert {r.name for r in config.read_only_regions} == {"POS_SUM", "ACC_YY", "ACC_TU", "ACC_T", "ACC_LC", "ACC_TY",
                                                          "COUNTERS"}
    assert config.region_depth(p.NonlinearRegion.ACC_TU) == 128 and config.region_depth(p.NonlinearRegion.W) == 16
    assert m.unpack_write(m.pack_write(p.NonlinearRegion.SIGMA, 3, [5, 6])) == (p.NonlinearRegion.SIGMA, 3, [5, 6])
    with pytest.raises(p.ProtocolError, match="read-only"):
        m.pack_write(p.NonlinearRegion.ACC_LC, 0, [1])
    with pytest.raises(p.ProtocolError, match="unknown region 18"):
        m.unpack_read(bytes([18, 0, 0, 1, 0]))
    with pytest.raises(p.ProtocolError, match="unknown region 12"):  # W is no linear region
        p.Messages(p.CoreConfig()).unpack_read(bytes([12, 0, 0, 1, 0]))


# ---------------------------------------------------------------- docs/protocol.md


def _doc_table(title: str) -> dict[str, int]:
    """``| NAME | 0x01 | ...`` rows of the table that follows a ``### title`` heading."""
    text = DOCS.read_text()
    section = text.split(f"### {title}\n", 1)[1].split("\n#", 1)[0]
    return {m.group(1): int(m.group(2), 0) for m in re.finditer(r"^\| `?([A-Z_][A-Z0-9_]*)`? \| (0x[0-9a-fA-F]+|\d+) \|",
                                                                 section, re.M)}


@pytest.mark.parametrize("title, enum", [("Commands", p.Command), ("Status codes", p.Status),
                                         ("Regions", p.Region), ("Nonlinear HRU regions", p.NonlinearRegion)])
def test_docs_code_tables_match_the_code(title, enum):
    assert _doc_table(title) == {e.name: int(e) for e in enum}


def test_docs_state_the_limits_and_wire_values():
    text = DOCS.read_text()
    assert ", ".join(f"{int(s)} {s.name}" for s in p.PassState) in text
    assert "bit 0 (`ZERO_STATE`)" in text and p.ForwardFlags.ZERO_STATE == 1
    assert "`capabilities:u8` (bit 0: echo stream mode" in text and p.Capability.ECHO_STREAM == 1
    assert "CONSTANT mode (0)" in text and "STREAM mode (1)" in text
    for value in (p.RX_BUFFER_BYTES, p.MAX_REQUEST_PAYLOAD, p.MAX_REPLY_PAYLOAD, p.MAX_WIRE_BYTES, p.PROTOCOL_VERSION):
        assert f"{value}" in text
    assert f"see below ({p.IDENTIFY_REPLY.size()} bytes; to a v1 host its first {p.IDENTIFY_V1_REPLY.size()})" in text
    assert f"fields 1–7 only ({p.IDENTIFY_V1_REPLY.size()} bytes: version 1's layout)" in text


def test_docs_examples_are_what_the_code_encodes():
    text = DOCS.read_text()
    m = p.Messages(p.CoreConfig())
    examples = [p.Request(7, p.Command.IDENTIFY, p.identify_request()), p.Request(7, p.Command.IDENTIFY),
                p.Request(3, p.Command.READ, m.pack_read(p.Region.B, 0, 10)),
                p.Reply(3, p.Command.READ, p.Status.BAD_ARGUMENT)]
    for message in examples:
        assert f"`{message.encode().hex(' ')}`" in text, message


# ---------------------------------------------------------------- per-step streams (HSSM blocks)


def test_block_regions_extend_the_hru_regions():
    """An HSSM block's core keeps every HRU region's number and adds KIN (and GAIN), as the lanes read them."""
    from echoboard.hdl.hru_lane import HRULane
    from echoboard.hdl.hru_nonlinear import NonlinearLane

    for hru, lane in (("linear", HRULane), ("nonlinear", NonlinearLane)):
        plain, block = p.REGIONS[hru], p.BLOCK_REGIONS[hru]
        assert all(block[r.name] == r for r in plain) and len(block) == len(plain) + 1 + (hru == "nonlinear")
        for ours, lanes in ((p.BLOCK_PARAMETERS[hru], lane.BLOCK_PARAMETERS),
                            (p.BLOCK_ACCUMULATORS[hru], lane.BLOCK_ACCUMULATORS)):
            assert ours == lanes


def test_capability_gates_the_block_regions():
    from echoboard.golden_model.hru_fixed_nonlinear import NonlinearFormat

    plain = p.CoreConfig(HRUSize(4, 2, 100), capabilities=p.Capability.ECHO_STREAM)
    block = dataclasses.replace(plain, capabilities=p.Capability.ECHO_STREAM | p.Capability.ECHO_OUTPUTS)
    assert plain.regions is p.Region and block.regions is p.LinearBlockRegion
    with pytest.raises(p.ProtocolError, match="unknown region 12"):
        p.Messages(plain).pack_read(12, 0, 1)
    kin = block.region(12)
    assert kin.name == "KIN" and kin in block.read_only_regions and block.region_field(kin).width == block.base.acc_width
    assert p.Messages(block).unpack_read(p.Messages(block).pack_read(kin, 0, 4)) == (kin, 0, 4)
    nonlinear = p.CoreConfig(HRUSize(4, 2, 100), NonlinearFormat(), capabilities=p.Capability.ECHO_OUTPUTS)
    gain = nonlinear.region(19)
    assert gain.name == "GAIN" and gain not in nonlinear.read_only_regions
    assert nonlinear.region_field(gain).width == nonlinear.base.coef_width and nonlinear.region(18).name == "KIN"
    # IDENTIFY carries the bits: a host learns the regions from the board
    assert p.unpack_identify(p.Messages(nonlinear).pack_identify()).regions is p.NonlinearBlockRegion


def test_outputs_flags_are_beside_the_modes_they_extend():
    """Bit 1 of FORWARD_START's flags and of ECHO_START's mode: apart from ZERO_STATE and the echo modes,
    so a board without the capability refuses it as a reserved bit (tests/test_board_blocks.py)."""
    assert p.ForwardFlags.OUTPUTS & p.ForwardFlags.ZERO_STATE == 0
    assert p.ECHO_OUTPUTS_FLAG > max(p.EchoMode) and p.ECHO_OUTPUTS_FLAG == int(p.ForwardFlags.OUTPUTS)


@given(st.integers(1, 64), st.data())
def test_dense_packing_round_trips_without_padding_between_words(width, data):
    values = data.draw(words(p.Field("w", width, True), data.draw(st.integers(0, 20))))
    packed = p.pack_dense(values, width)
    assert len(packed) == p.dense_bytes(len(values), width) == (len(values) * width + 7) // 8
    assert p.unpack_dense(packed, width, len(values)) == values
    bits = int.from_bytes(packed, "little")  # word k in bits k·width ...
    assert all((bits >> (k * width)) & ((1 << width) - 1) == v & ((1 << width) - 1) for k, v in enumerate(values))


def test_dense_packing_example_and_errors():
    assert p.pack_dense([-1, 1], 5).hex(" ") == "3f 00"  # docs/protocol.md's example
    with pytest.raises(ValueError, match="does not fit"):
        p.pack_dense([16], 5)
    with pytest.raises(p.ProtocolError, match="fill bits"):
        p.unpack_dense(bytes([0x3F, 0x80]), 5, 2)
    with pytest.raises(p.PayloadLengthError):
        p.unpack_dense(bytes(3), 5, 2)


def test_outputs_passes_need_room_for_a_chunk_in_one_reply():
    """Large P or N leave a reply no room for an outputs chunk (>= 1 forward, >= 2 echo steps): the
    host refuses them in one line instead of cutting chunks it cannot send."""
    assert p.Messages(p.CoreConfig(size=HRUSize(16, 64))).max_output_steps(p.PassState.ECHO) == 3
    p.Messages(p.CoreConfig(size=HRUSize(16, 64))).check_outputs_fit()
    for size, room in ((HRUSize(16, 128), "13 forward and 1 echo"), (HRUSize(100, 8), "0 forward and 31 echo")):
        m = p.Messages(p.CoreConfig(size=size, capabilities=p.PIPELINED_CAPABILITIES))
        with pytest.raises(ValueError, match=f"room for {room} steps of outputs"):
            m.data_payloads([[0] * size.inputs] * 40, outputs=True)


def test_outputs_parts_fit_a_reply_beside_the_final_result():
    m = p.Messages(p.CoreConfig())  # P16/N8, Ws = 32: docs/protocol.md's numbers
    assert (m.max_output_steps(p.PassState.FORWARD), m.max_output_steps(p.PassState.ECHO)) == (13, 31)
    for state, final in ((p.PassState.FORWARD, m.forward_result), (p.PassState.ECHO, m.echo_result)):
        steps = m.max_output_steps(state)
        rows = [[(-1) ** k * k] * m.output_words(state) for k in range(steps)]
        part = m.pack_outputs(state, 40, rows)
        assert len(part) + final.size() <= p.MAX_REPLY_PAYLOAD  # the last chunk's reply
        assert len(m.pack_outputs(state, 40, rows + rows[:1])) + final.size() > p.MAX_REPLY_PAYLOAD
        tail = bytes(final.size())
        assert m.unpack_outputs(state, part + tail) == (40, rows, tail)
        assert m.unpack_outputs(state, m.pack_outputs(state, 0, [])) == (0, [], b"")  # chunk 0's reply
    with pytest.raises(ValueError, match="16 words"):
        m.pack_outputs(p.PassState.FORWARD, 0, [[1] * 8])
    chunks = m.data_payloads([[0] * 8] * 100, outputs=True)
    assert [m.forward_data.steps(len(c)) for c in chunks] == [13] * 7 + [9]
    assert len(m.data_payloads([[0] * 8] * 100)) == 2  # without outputs: 63 steps a chunk


def test_docs_outputs_tables_match_the_code():
    assert _doc_table("Outputs capabilities") == {c.name: int(c) for c in p.Capability if c != p.Capability.ECHO_STREAM}
    assert _doc_table("Outputs codes") == {"OUTPUTS": int(p.Command.OUTPUTS), "OUTPUTS_FLAG": int(p.ForwardFlags.OUTPUTS)}
    section = DOCS.read_text().split("### Block regions\n", 1)[1].split("\n#", 1)[0]
    rows = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(r"^\| (\w+) \| (\d+|—) \| (\d+) \|", section, re.M)}
    assert rows == {"KIN": (str(int(p.LinearBlockRegion.KIN)), str(int(p.NonlinearBlockRegion.KIN))),
                    "GAIN": ("—", str(int(p.NonlinearBlockRegion.GAIN)))}

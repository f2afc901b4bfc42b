"""Caption sources: DA-CLIP CSVs (temporary files only)."""
from __future__ import annotations

import pytest

from vlir.core.data.captions import CaptionError, CaptionSource, CSVCaptions, split_title

HEADER = "filepath\ttitle\n"


def write(tmp_path, text, name="daclip_train.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_split_title_on_last_separator():
    assert split_title("a dog: noisy") == ("a dog", "noisy")
    assert split_title("a sign reading: stop here: jpeg-compressed") == ("a sign reading: stop here", "jpeg-compressed")
    assert split_title("just a caption") == ("just a caption", None)


def test_csv_reads_daclip_format(tmp_path):
    csv = write(tmp_path, HEADER
                + "datasets/universal/train/noisy/LQ/0001.png\ta dog on the grass: noisy\n"
                + "datasets/universal/train/hazy/LQ/0001.png\ta city skyline: with clouds: hazy\n"
                + "\n"
                + "/abs/data/rainy/LQ/rain-12.png\ta street in the rain: rainy\n")
    src = CSVCaptions(csv)
    assert isinstance(src, CaptionSource)
    assert len(src) == 3
    assert src.caption("datasets/universal/train/noisy/LQ/0001.png") == "a dog on the grass"
    assert src.degradation("datasets/universal/train/noisy/LQ/0001.png") == "noisy"
    assert src.caption("datasets/universal/train/hazy/LQ/0001.png") == "a city skyline: with clouds"
    assert src.degradation("datasets/universal/train/hazy/LQ/0001.png") == "hazy"
    # relative entries resolve against the CSV's folder; paths from elsewhere match by trailing parts
    assert src.caption(tmp_path / "datasets/universal/train/noisy/LQ/0001.png") == "a dog on the grass"
    assert src.caption("/mnt/other/universal/train/hazy/LQ/0001.png") == "a city skyline: with clouds"
    assert src.caption("/abs/data/rainy/LQ/rain-12.png") == "a street in the rain"
    assert src.caption("elsewhere/rain-12.png") == "a street in the rain"
    assert src.caption("unknown/9999.png") is None
    # same file name under two degradations: ambiguous by name alone
    with pytest.raises(CaptionError, match="matches 2 entries"):
        src.caption("0001.png")


def test_csv_quoted_fields(tmp_path):
    # pandas.to_csv quotes fields holding quotes; csv quoting is honoured
    csv = write(tmp_path, HEADER + 'a/LQ/x.png\t"a sign saying ""hello"": low-light"\n')
    assert CSVCaptions(csv).caption("a/LQ/x.png") == 'a sign saying "hello"'


def test_csv_malformed_rows_name_file_and_line(tmp_path):
    bad_fields = write(tmp_path, HEADER + "a.png\tcat: noisy\nb.png\n", "fields.csv")
    with pytest.raises(CaptionError, match=r"fields\.csv, line 3: 1 field"):
        CSVCaptions(bad_fields)
    no_deg = write(tmp_path, HEADER + "a.png\tcat: noisy\nb.png\ta cat without degradation\n", "nodeg.csv")
    with pytest.raises(CaptionError, match=r"nodeg\.csv, line 3: .*no ': ' separator"):
        CSVCaptions(no_deg)
    assert CSVCaptions(no_deg, require_degradation=False).caption("b.png") == "a cat without degradation"
    empty_caption = write(tmp_path, HEADER + "a.png\t: noisy\n", "empty.csv")
    with pytest.raises(CaptionError, match=r"empty\.csv, line 2: empty caption"):
        CSVCaptions(empty_caption)
    bad_header = write(tmp_path, "path,caption\na.png,cat: noisy\n", "header.csv")
    with pytest.raises(CaptionError, match=r"header\.csv, line 1: header .* lacks column"):
        CSVCaptions(bad_header)
    with pytest.raises(CaptionError, match="no such file"):
        CSVCaptions(tmp_path / "missing.csv")
    with pytest.raises(CaptionError, match="empty file"):
        CSVCaptions(write(tmp_path, "", "blank.csv"))


def test_csv_written_by_the_csv_module_reads_back(tmp_path):
    import csv

    rows = [("u/noisy/LQ/1.png", "a dog", "noisy"), ("u/hazy/LQ/1.png", "a note: 'hi'", "hazy"),
            ("u/x/2.png", 'a "quoted" word', "rainy")]
    path = tmp_path / "captions.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["filepath", "title"])
        w.writerows([fp, f"{cap}: {deg}"] for fp, cap, deg in rows)
    src = CSVCaptions(path)
    assert isinstance(src, CaptionSource)
    for fp, cap, deg in rows:
        assert src.caption(fp) == cap and src.degradation(fp) == deg

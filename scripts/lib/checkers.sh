# shellcheck shell=bash
# The external checkers the output-format tests run (gpu-worker/engine/tests/formats.rs):
#   hocr-check   from hocr-tools (PyPI), in .venv/checkers
#   xmllint      (Debian libxml2-utils) with the ALTO v4 schema: alto-4-3.xsd and the xlink.xsd
#                it imports, taken from the kraken 6.0.3 source archive on PyPI (the one registry
#                package found that ships them; sha256-pinned), kept in $OCR_FLEET_CACHE/alto
#   pdftotext, pdfinfo (Debian poppler-utils) and qpdf: the upload check's PDF reader is compared
#                with them (functions/core/tests/pdf_structure.rs)
# checkers_ensure installs what is missing and exports OCR_HOCR_CHECK and OCR_ALTO_XSD.
# Source after common.sh.

KRAKEN_SDIST_URL="https://files.pythonhosted.org/packages/e7/b5/e0477a3b5789c6fd73bf03dbd042a5e56f6d52c07d0a0a19d98e1d128ac6/kraken-6.0.3.tar.gz"
KRAKEN_SDIST_SHA256="5fd0b3bbe8e501e9d6124737adac9f7d7e1bfaee52daf577c0abe28b972556c4"
ALTO_XSD_SHA256="e075e34e07eb5d1ad9d75fab4822285564b83d324b141abb053481ad1f829d4f"

checkers_ensure() {
    # shellcheck source=scripts/lib/python-env.sh
    source "$ROOT/scripts/lib/python-env.sh"
    apt_install poppler-utils libxml2-utils qpdf
    local py dir="$OCR_FLEET_CACHE/alto" tmp
    py=$(python_env checkers hocr-tools==1.1.1) || die "could not install hocr-tools"
    export OCR_HOCR_CHECK="${py%/python}/hocr-check"
    if [[ ! -f "$dir/alto-4-3.xsd" ]] || ! sha256sum "$dir/alto-4-3.xsd" | grep -q "^$ALTO_XSD_SHA256 "; then
        log "fetching the ALTO v4 schema (kraken 6.0.3 source archive, PyPI)"
        tmp=$(mktemp -d)
        curl -fsSL --retry 3 -o "$tmp/kraken.tar.gz" "$KRAKEN_SDIST_URL" || die "could not download $KRAKEN_SDIST_URL"
        echo "$KRAKEN_SDIST_SHA256  $tmp/kraken.tar.gz" | sha256sum -c --quiet - || die "kraken-6.0.3.tar.gz: sha256 mismatch"
        tar -xzf "$tmp/kraken.tar.gz" -C "$tmp" kraken-6.0.3/tests/resources/alto-4-3.xsd kraken-6.0.3/tests/resources/xlink.xsd
        mkdir -p "$dir"
        # alto-4-3.xsd imports xlink.xsd by a relative path: the two stay side by side.
        mv "$tmp/kraken-6.0.3/tests/resources/alto-4-3.xsd" "$tmp/kraken-6.0.3/tests/resources/xlink.xsd" "$dir/"
        rm -rf "$tmp"
    fi
    export OCR_ALTO_XSD="$dir/alto-4-3.xsd"
}

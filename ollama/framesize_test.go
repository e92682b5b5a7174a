package ollama

import (
	"errors"
	"io"
	"testing"
)

// lineReader streams "data: ", n-7 bytes of x and a CR in reads of at most 64 KiB, then
// an LF in a read of its own: the CRLF ending the line is split across two reads.
type lineReader struct {
	n, at  int
	lfSent bool
}

func (r *lineReader) Read(p []byte) (int, error) {
	const head = "data: "
	switch {
	case r.at < r.n:
		k := min(len(p), 64<<10, r.n-r.at)
		for i := range k {
			switch at := r.at + i; {
			case at < len(head):
				p[i] = head[at]
			case at == r.n-1:
				p[i] = '\r'
			default:
				p[i] = 'x'
			}
		}
		r.at += k
		return k, nil
	case !r.lfSent:
		r.lfSent = true
		p[0] = '\n'
		return 1, nil
	}
	return 0, io.EOF
}

// A frame is at most MaxFrameSize bytes however its last line end arrives: the LF of a
// CRLF that comes in a read after its CR counts toward it as the CR does.
func TestSplitFramesMaxFrameSizeCountsASplitCRLF(t *testing.T) {
	for _, n := range []int{MaxFrameSize - 1, MaxFrameSize} {
		got := 0
		readErr, fnErr := splitFrames(&lineReader{n: n}, SSE, func(fr []byte) error {
			got += len(fr)
			return nil
		})
		if fnErr != nil {
			t.Fatal(fnErr)
		}
		if n+1 > MaxFrameSize {
			if !errors.Is(readErr, ErrFrameTooLarge) {
				t.Errorf("a frame of %d bytes (its CRLF split): %v, %d bytes delivered; want ErrFrameTooLarge", n+1, readErr, got)
			}
			continue
		}
		if readErr != nil || got != n+1 {
			t.Errorf("a frame of %d bytes (its CRLF split): %v, %d bytes delivered; want it whole", n+1, readErr, got)
		}
	}
}

// crOnlyReader streams NDJSON lines ended by a CR alone, without end.
type crOnlyReader struct{ at int }

func (r *crOnlyReader) Read(p []byte) (int, error) {
	const line = "{\"message\":{\"content\":\"x\"},\"done\":false}\r"
	for i := range p {
		p[i] = line[r.at%len(line)]
		r.at++
	}
	return len(p), nil
}

// NDJSON whose lines end with a CR alone is one line, as Ollama's Go client
// (bufio.ScanLines) and ollama-js read it (ADR-0135): nothing of it is a frame until an
// LF or its end, and a stream of it without end is cut at MaxFrameSize, not held in
// memory without bound.
func TestSplitFramesCROnlyNDJSONIsOneBoundedLine(t *testing.T) {
	r := &crOnlyReader{}
	frames := 0
	readErr, fnErr := splitFrames(r, NDJSON, func([]byte) error { frames++; return errStopFrames })
	if fnErr != nil || !errors.Is(readErr, ErrFrameTooLarge) || frames != 0 {
		t.Fatalf("%v, %v, %d frames, want ErrFrameTooLarge and none", readErr, fnErr, frames)
	}
	if r.at > MaxFrameSize+64<<10+1 {
		t.Errorf("read %d bytes of one line, past MaxFrameSize and one read", r.at)
	}
	if got := splitAll(t, "{\"a\":1}\r{\"b\":2}\r", NDJSON); len(got) != 1 {
		t.Errorf("a CR-only stream that ends: frames %q, want one", got)
	}
}

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

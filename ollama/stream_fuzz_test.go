package ollama

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// chunkReader hands out at most n bytes per Read, as a network connection may.
type chunkReader struct {
	data []byte
	n    int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	k := min(len(p), r.n, len(r.data))
	copy(p, r.data[:k])
	r.data = r.data[k:]
	return k, nil
}

var errStopFrames = errors.New("stop")

// FuzzSplitFrames fuzzes the splitter of the target's NDJSON and SSE streams: the frames
// joined give back the stream byte for byte (but a leading byte order mark), each frame ends exactly where its format
// says (frameEnds: LF for NDJSON; an empty line for SSE, its lines ended by LF, CRLF or
// CR), and an error from the frame handler stops the split at once.
// Run with: go test -run '^$' -fuzz '^FuzzSplitFrames$' -fuzztime 30s ./ollama
//
// A run of padK KiB is inserted at cut so that lines longer than the 64 KiB read buffer
// (the ErrBufferFull path) are reached without huge corpus files.
func FuzzSplitFrames(f *testing.F) {
	f.Add([]byte("{\"a\":1}\n{\"b\":2}\n"), false, uint8(0), uint16(0), uint8(0), uint8(0))
	f.Add([]byte("{\"a\":1}\n{\"b\":2}"), false, uint8(0), uint16(0), uint8(2), uint8(0))
	f.Add([]byte("data: {\"x\":1}\n\ndata: [DONE]\n\n"), true, uint8(0), uint16(0), uint8(0), uint8(0))
	f.Add([]byte("data: a\r\n\r\n: comment\ndata: b\n\n\n\ndata: c"), true, uint8(3), uint16(0), uint8(0), uint8(0))
	f.Add([]byte("{\"x\":\"\"}\n"), false, uint8(0), uint16(7), uint8(70), uint8(0))
	f.Add([]byte("data: \n\n"), true, uint8(0), uint16(6), uint8(130), uint8(1))
	f.Add([]byte("\n\n\n"), false, uint8(0), uint16(1), uint8(0), uint8(2))
	f.Add([]byte("data: a\r\rdata: b\r\n\r\ndata: c\n\r\ndata: d\r\r\n: e\r"), true, uint8(0), uint16(0), uint8(0), uint8(0))
	f.Add([]byte("\r\r\n\r\n\n\r"), true, uint8(1), uint16(3), uint8(65), uint8(0))
	f.Add([]byte("{\"a\":1}\r\n\r{\"b\":2}\r"), false, uint8(0), uint16(0), uint8(0), uint8(0))
	f.Add([]byte("\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBF"), true, uint8(1), uint16(0), uint8(0), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, sse bool, chunk uint8, cut uint16, padK uint8, stopAt uint8) {
		in := data
		if padK > 0 {
			at := int(cut) % (len(data) + 1)
			in = make([]byte, 0, len(data)+int(padK)<<10)
			in = append(in, data[:at]...)
			in = append(in, bytes.Repeat([]byte{'x'}, int(padK)<<10)...)
			in = append(in, data[at:]...)
		}
		framing := NDJSON
		if sse {
			framing = SSE
		}
		var frames [][]byte
		readErr, fnErr := splitFrames(&chunkReader{data: in, n: int(chunk) + 1}, framing, func(fr []byte) error {
			frames = append(frames, append([]byte(nil), fr...))
			if len(frames) == int(stopAt) {
				return errStopFrames
			}
			return nil
		})
		if readErr != nil {
			t.Fatalf("read error %v from an in-memory stream", readErr)
		}
		in = bytes.TrimPrefix(in, byteOrderMark) // dropped: no part of a frame
		if stopAt > 0 && len(frames) >= int(stopAt) {
			if fnErr != errStopFrames || len(frames) != int(stopAt) {
				t.Fatalf("handler stopped at frame %d, got %d frames and %v", stopAt, len(frames), fnErr)
			}
			if !bytes.HasPrefix(in, bytes.Join(frames, nil)) {
				t.Fatal("frames before the stop are not the stream's start")
			}
			return
		}
		if fnErr != nil {
			t.Fatalf("handler error %v that the handler never returned", fnErr)
		}
		if got := bytes.Join(frames, nil); !bytes.Equal(got, in) {
			t.Fatalf("frames joined give %d bytes, not the %d sent", len(got), len(in))
		}
		for i, fr := range frames {
			if len(fr) == 0 {
				t.Fatalf("frame %d is empty", i)
			}
		}
		// Each frame end is one of the stream's frame ends, read from it whole: every
		// frame end is one cut, and there is no cut anywhere else. The LF of a CRLF
		// whose CR ends a frame may begin the next frame instead (it had not come when
		// the CR was read), or be the last frame by itself.
		cuts := map[int]bool{}
		at := 0
		for _, fr := range frames {
			at += len(fr)
			cuts[at] = true
		}
		for _, ends := range frameEnds(in, framing) {
			n := 0
			for _, e := range ends {
				if cuts[e] {
					n++
					delete(cuts, e)
				}
			}
			if n == 0 || n == 2 && ends[1] != len(in) {
				t.Fatalf("the frame end at %v is cut %d times in %q: %q", ends, n, in, frames)
			}
		}
		delete(cuts, len(in))
		if len(cuts) > 0 {
			t.Fatalf("frames cut where no frame ends (%v) in %q: %q", cuts, in, frames)
		}
	})
}

// frameEnds reads the whole stream in and returns where its frames may end: after each
// LF (NDJSON); after each empty line's end (SSE, lines ended by LF, CRLF or CR), which
// for a CRLF is after its CR or after its LF.
func frameEnds(in []byte, f Framing) [][]int {
	var ends [][]int
	lineStart := 0
	for i := 0; i < len(in); i++ {
		c := in[i]
		if f == NDJSON {
			if c == '\n' {
				ends = append(ends, []int{i + 1})
			}
			continue
		}
		if c != '\r' && c != '\n' {
			continue
		}
		end := []int{i + 1}
		if c == '\r' && i+1 < len(in) && in[i+1] == '\n' {
			i++
			end = append(end, i+1)
		}
		if i+1-len(end) == lineStart {
			ends = append(ends, end)
		}
		lineStart = i + 1
	}
	return ends
}

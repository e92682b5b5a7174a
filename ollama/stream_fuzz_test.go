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
// joined give back the stream byte for byte, each frame ends exactly where its format
// says, and an error from the frame handler stops the split at once.
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
	f.Fuzz(func(t *testing.T, data []byte, sse bool, chunk uint8, cut uint16, padK uint8, stopAt uint8) {
		in := data
		if padK > 0 {
			at := int(cut) % (len(data) + 1)
			in = make([]byte, 0, len(data)+int(padK)<<10)
			in = append(in, data[:at]...)
			in = append(in, bytes.Repeat([]byte{'x'}, int(padK)<<10)...)
			in = append(in, data[at:]...)
		}
		end := isLineEnd
		if sse {
			end = isEventEnd
		}
		var frames [][]byte
		readErr, fnErr := splitFrames(&chunkReader{data: in, n: int(chunk) + 1}, end, func(fr []byte) error {
			frames = append(frames, append([]byte(nil), fr...))
			if len(frames) == int(stopAt) {
				return errStopFrames
			}
			return nil
		})
		if readErr != nil {
			t.Fatalf("read error %v from an in-memory stream", readErr)
		}
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
			lines := bytes.SplitAfter(fr, []byte("\n"))
			if len(lines[len(lines)-1]) == 0 {
				lines = lines[:len(lines)-1]
			}
			last := i == len(frames)-1
			for j, l := range lines {
				isLast := j == len(lines)-1
				ended := l[len(l)-1] == '\n' && end(l)
				if !isLast && ended {
					t.Fatalf("frame %d has a frame end inside it at line %d: %q", i, j, l)
				}
				if isLast && !last && !ended {
					t.Fatalf("frame %d does not end at a frame end: %q", i, l)
				}
			}
		}
	})
}

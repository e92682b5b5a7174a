package ollama

import (
	"bytes"
	"fmt"
	"testing"
)

// benchStream is an answer of 32 frames as Ollama streams them.
func benchStream(f Framing) []byte {
	var b bytes.Buffer
	for i := range 32 {
		line := fmt.Sprintf(`{"model":"tiny-a","created_at":"2026-12-06T20:00:00Z","message":{"role":"assistant","content":"token %d"},"done":false}`, i)
		if f == SSE {
			fmt.Fprintf(&b, "data: %s\n\n", line)
		} else {
			fmt.Fprintf(&b, "%s\n", line)
		}
	}
	return b.Bytes()
}

// BenchmarkSplitFrames cuts a 32-frame answer into its frames, as the worker does with
// every streamed answer.
func BenchmarkSplitFrames(b *testing.B) {
	for _, f := range []Framing{NDJSON, SSE} {
		stream := benchStream(f)
		b.Run(map[Framing]string{NDJSON: "ndjson", SSE: "sse"}[f], func(b *testing.B) {
			b.SetBytes(int64(len(stream)))
			for b.Loop() {
				n := 0
				if _, err := splitFrames(bytes.NewReader(stream), f, func([]byte) error { n++; return nil }); err != nil || n != 32 {
					b.Fatalf("%d frames, %v", n, err)
				}
			}
		})
	}
}

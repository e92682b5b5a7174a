package ollama

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"
	"time"
)

// splitAll cuts in, read whole, into the frames of framing f.
func splitAll(t *testing.T, in string, f Framing) []string {
	t.Helper()
	var frames []string
	readErr, fnErr := splitFrames(bytes.NewReader([]byte(in)), f, func(fr []byte) error {
		frames = append(frames, string(fr))
		return nil
	})
	if readErr != nil || fnErr != nil {
		t.Fatalf("splitFrames(%q): %v, %v", in, readErr, fnErr)
	}
	return frames
}

// An SSE stream is cut into its events as a client reads them (the event stream rules,
// openai-python's and openai-node's decoders): its lines end with LF, CRLF or CR, mixed
// as they come, and an empty line ends an event. A proxy in front of Ollama may end its
// events with "\r\n\r\n" or "\r\r".
func TestSplitFramesSSELineEnds(t *testing.T) {
	t.Parallel()
	events := []string{
		"data: a\r\r",
		"data: b\r\n\r\n",
		"data: c\n\r\n",
		"data: d\r\r\n",
		"event: x\rdata: e\n\r",
		"data: f\r\ndata: g\r\r",
		": comment\r\r",
		"data: [DONE]\n\n",
	}
	got := splitAll(t, stringsJoin(events), SSE)
	if !slices.Equal(got, events) {
		t.Fatalf("frames\n%q\nwant\n%q", got, events)
	}
}

// NDJSON is cut at LF alone, as Ollama's own clients read it (ollama-js splits on "\n";
// a CR before it is white space JSON allows): a CR alone ends no line.
func TestSplitFramesNDJSONLineEnds(t *testing.T) {
	t.Parallel()
	lines := []string{"{\"a\":1}\r\n", "{\"b\":\r2}\n", "\n", "{\"c\":3}"}
	if got := splitAll(t, stringsJoin(lines), NDJSON); !slices.Equal(got, lines) {
		t.Fatalf("frames %q, want %q", got, lines)
	}
}

func stringsJoin(s []string) string {
	var b bytes.Buffer
	for _, x := range s {
		b.WriteString(x)
	}
	return b.String()
}

// An event ended by a CR is handed on as the CR comes: the splitter does not wait for
// an LF that may follow it (a CRLF split across reads), which a target still thinking
// may send only with its next event. That LF, when it comes, begins the next frame.
func TestSplitFramesDoesNotWaitForTheLFOfACRLF(t *testing.T) {
	t.Parallel()
	pr, pw := io.Pipe()
	frames := make(chan string, 4)
	done := make(chan error, 1)
	go func() {
		readErr, fnErr := splitFrames(pr, SSE, func(fr []byte) error {
			frames <- string(fr)
			return nil
		})
		done <- errors.Join(readErr, fnErr)
	}()
	if _, err := pw.Write([]byte("data: a\r\n\r")); err != nil {
		t.Fatal(err)
	}
	select {
	case fr := <-frames:
		if fr != "data: a\r\n\r" {
			t.Fatalf("first frame %q", fr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the event ended by its CR was held back for the LF that may follow it")
	}
	if _, err := pw.Write([]byte("\ndata: b\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if fr := <-frames; fr != "\ndata: b\r\n\r\n" {
		t.Fatalf("second frame %q", fr)
	}
}

// A UTF-8 byte order mark before a stream's first byte is dropped, however the reads cut
// it: it is no part of the first frame (an SSE client drops it, ollama-js's TextDecoder
// too). One later in the stream, or a start that only begins as one, stays as sent.
func TestSplitFramesDropsALeadingByteOrderMark(t *testing.T) {
	t.Parallel()
	const bom = "\xEF\xBB\xBF"
	for _, tc := range []struct {
		in   string
		f    Framing
		want []string
	}{
		{bom + "{\"a\":1}\n{\"b\":2}\n", NDJSON, []string{"{\"a\":1}\n", "{\"b\":2}\n"}},
		{bom + "data: a\n\ndata: b\n\n", SSE, []string{"data: a\n\n", "data: b\n\n"}},
		{bom, NDJSON, nil},
		{"{\"a\":1}\n" + bom + "{\"b\":2}\n", NDJSON, []string{"{\"a\":1}\n", bom + "{\"b\":2}\n"}},
		{bom + bom + "{}\n", NDJSON, []string{bom + "{}\n"}},
		{"\xEF\xBB{}\n", NDJSON, []string{"\xEF\xBB{}\n"}},
		{"\xEF\n{}\n", NDJSON, []string{"\xEF\n", "{}\n"}},
	} {
		for _, n := range []int{1, 2, 64} {
			var got []string
			readErr, fnErr := splitFrames(&chunkReader{data: []byte(tc.in), n: n}, tc.f, func(fr []byte) error {
				got = append(got, string(fr))
				return nil
			})
			if readErr != nil || fnErr != nil || !slices.Equal(got, tc.want) {
				t.Errorf("%q in reads of %d: frames %q (%v, %v), want %q", tc.in, n, got, readErr, fnErr, tc.want)
			}
		}
	}
}

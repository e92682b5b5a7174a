package gateway

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A blob upload has no size limit but must make progress: one that sends part of its
// body, or none of it, and then nothing ends with 408 once a read has waited
// BodyReadTimeout, and the call to the target it fed is aborted, instead of holding both
// for ever.
func TestBlobUploadStalledEnds(t *testing.T) {
	t.Parallel()
	for name, part := range map[string]string{"part sent": "hello", "nothing sent": ""} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			blobUploadStalls(t, part)
		})
	}
}

// blobUploadStalls checks that an upload declaring 1 MiB that sends part (which may be
// nothing) and stalls ends with 408, its call to the target aborted.
func blobUploadStalls(t *testing.T, part string) {
	t.Helper()
	const timeout = 200 * time.Millisecond
	b := newTestBundle(t, withGateway(func(c *Config) { c.BodyReadTimeout = timeout }))
	path := "/api/blobs/sha256:" + strings.Repeat("0123456789abcdef", 4)
	conn := b.rawRequest(t, http.MethodPost, path, 1<<20, part)
	// The bound only keeps a broken build from hanging the test: the answer is due after
	// one BodyReadTimeout.
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a stalled upload: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e struct{ Error string }
	if resp.StatusCode != http.StatusRequestTimeout || json.Unmarshal(body, &e) != nil || e.Error == "" {
		t.Fatalf("stalled upload: %d %s, want 408 with an error", resp.StatusCode, body)
	}
	err = b.Fake.WaitFor(testCtx(t, 10*time.Second), func(calls []ollamatest.Call) bool {
		for _, c := range calls {
			if c.Path == path && c.Finished && c.Canceled {
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("the target's upload was not aborted: %+v", b.Fake.Calls())
	}
}

// An upload that keeps coming, however slowly, goes on past BodyReadTimeout: the limit
// is on each read's wait, not on the whole body.
func TestBlobUploadSlowButMoving(t *testing.T) {
	t.Parallel()
	const timeout = 2 * time.Second
	b := newTestBundle(t, withGateway(func(c *Config) { c.BodyReadTimeout = timeout }))
	path := "/api/blobs/sha256:" + strings.Repeat("0123456789abcdef", 4)
	const pieces, piece = 12, "0123456789"
	start := time.Now()
	conn := b.rawRequest(t, http.MethodPost, path, pieces*len(piece), piece)
	tick := time.NewTicker(timeout / 8) // a gap of up to 7/8 of the limit on a busy machine still passes
	defer tick.Stop()
	for range pieces - 1 {
		<-tick.C
		if _, err := io.WriteString(conn, piece); err != nil {
			t.Fatalf("the upload was cut off: %v", err)
		}
	}
	resp, body := readResponse(t, conn)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("slow upload: %d %s", resp.StatusCode, body)
	}
	if d := time.Since(start); d <= timeout {
		t.Fatalf("the upload took %s, not over BodyReadTimeout (%s): the test proves nothing", d, timeout)
	}
	var got []byte
	for _, c := range b.Fake.Calls() {
		if c.Path == path {
			got = c.Body
		}
	}
	if want := strings.Repeat(piece, pieces); string(got) != want {
		t.Fatalf("the target got %q", got)
	}
}

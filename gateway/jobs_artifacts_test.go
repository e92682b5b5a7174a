package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// largeArtifact is n bytes in which no 4-byte run repeats nearby, so a part served from
// the wrong place never matches by chance.
func largeArtifact(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i>>24) ^ byte(i>>16) ^ byte(i>>8)*3 ^ byte(i)*7
	}
	return b
}

// An artifact of several chunks, and a result the record holds, are served whole, in one
// range (206), by HEAD without a body, and not again to a client that has them (304);
// the same bytes have the same ETag wherever they are kept.
func TestArtifactRanges(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	big := largeArtifact(700_000) // six chunks of 128 KiB
	held := []byte(`{"message":{"content":"hi"},"done":true}`)

	stored := jobsSubmit(t, b, `{"model":"tiny-a","messages":[]}`)
	finishJob(t, b.Broker.Store, stored, nil, map[string][2]string{
		"big.bin":     {"application/octet-stream", string(big)},
		"result.json": {"application/json", string(held)},
	})
	inline := jobsSubmit(t, b, `{"model":"tiny-a","messages":[]}`)
	a, ok := broker.HoldResult(held)
	if !ok {
		t.Fatal("result not held")
	}
	if _, _, err := b.Broker.Store.Modify(ctx, inline, func(j *broker.Job) error {
		j.Result = held
		j.SetArtifact(a)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	obs, err := b.Broker.JetStream(t).ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := obs.GetInfo(ctx, stored+"/big.bin")
	if err != nil || info.Chunks < 4 {
		t.Fatalf("big.bin: %+v, %v; want an object of several chunks", info, err)
	}

	for _, tc := range []struct {
		path, ct string
		data     []byte
	}{
		{"/jobs/" + stored + "/artifacts/big.bin", "application/octet-stream", big},
		{"/jobs/" + stored + "/artifacts/result.json", "application/json", held},
		{"/jobs/" + inline + "/artifacts/result.json", "application/json", held},
	} {
		size := int64(len(tc.data))
		resp, out := b.request(t, http.MethodGet, tc.path, nil)
		h := resp.Header
		etag := h.Get("ETag")
		if resp.StatusCode != http.StatusOK || !bytes.Equal(out, tc.data) || h.Get("Content-Type") != tc.ct ||
			h.Get("Content-Length") != strconv.FormatInt(size, 10) || h.Get("X-Content-Type-Options") != "nosniff" ||
			h.Get("Content-Security-Policy") != "sandbox" || h.Get("Accept-Ranges") != "bytes" || len(etag) < 10 {
			t.Fatalf("GET %s: %d, %d of %d bytes, %v", tc.path, resp.StatusCode, len(out), size, h)
		}
		if tc.ct == "application/json" && etag != heldETag(t, b, inline) {
			t.Errorf("GET %s: ETag %s differs from the held result's", tc.path, etag)
		}
		for _, rc := range []struct {
			rng      string
			off, end int64 // the part, end exclusive
		}{
			{"bytes=0-0", 0, 1},
			{"bytes=2-9", 2, 10},
			{"bytes=-5", size - 5, size},
			{"bytes=-99999999", 0, size},
			{"bytes=" + strconv.FormatInt(size-3, 10) + "-", size - 3, size},
			{"bytes=10-99999999", 10, size},
			{"bytes=131000-400000", min(131000, size), min(400001, size)},
		} {
			if rc.off >= size {
				continue
			}
			resp, out := b.request(t, http.MethodGet, tc.path, nil, "Range", rc.rng)
			want := fmt.Sprintf("bytes %d-%d/%d", rc.off, rc.end-1, size)
			if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != want ||
				resp.Header.Get("Content-Length") != strconv.FormatInt(rc.end-rc.off, 10) || !bytes.Equal(out, tc.data[rc.off:rc.end]) {
				t.Errorf("GET %s %s: %d %q, %d bytes; want 206 %q and those bytes", tc.path, rc.rng, resp.StatusCode,
					resp.Header.Get("Content-Range"), len(out), want)
			}
		}
		for _, rng := range []string{"bytes=" + strconv.FormatInt(size, 10) + "-", "bytes=-0"} {
			resp, _ := b.request(t, http.MethodGet, tc.path, nil, "Range", rng)
			if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes */%d", size) {
				t.Errorf("GET %s %s: %d %q; want 416 with the size", tc.path, rng, resp.StatusCode, resp.Header.Get("Content-Range"))
			}
		}
		// Served whole: several ranges, a malformed one, one under a stale If-Range.
		for _, hdr := range [][]string{
			{"Range", "bytes=0-1,5-6"},
			{"Range", "bytes=9-2"},
			{"Range", "bytes=+1-2"}, // a position is digits alone, no sign
			{"Range", "bytes=1-+2"},
			{"Range", "bytes=-+5"},
			{"Range", "items=0-1"},
			{"Range", "bytes=0-1", "If-Range", `"SHA-256=stale"`},
		} {
			resp, out := b.request(t, http.MethodGet, tc.path, nil, hdr...)
			if resp.StatusCode != http.StatusOK || !bytes.Equal(out, tc.data) {
				t.Errorf("GET %s %q: %d, %d bytes; want the whole artifact", tc.path, hdr, resp.StatusCode, len(out))
			}
		}
		resp, out = b.request(t, http.MethodGet, tc.path, nil, "Range", "bytes=1-2", "If-Range", etag)
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(out, tc.data[1:3]) {
			t.Errorf("GET %s with its If-Range: %d %q; want the range", tc.path, resp.StatusCode, out)
		}
		resp, out = b.request(t, http.MethodHead, tc.path, nil)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Length") != strconv.FormatInt(size, 10) || len(out) != 0 || resp.Header.Get("ETag") != etag {
			t.Errorf("HEAD %s: %d %v, %d bytes", tc.path, resp.StatusCode, resp.Header, len(out))
		}
		for _, inm := range []string{etag, `"other", W/` + etag, "*"} {
			resp, out = b.request(t, http.MethodGet, tc.path, nil, "If-None-Match", inm)
			if resp.StatusCode != http.StatusNotModified || len(out) != 0 {
				t.Errorf("GET %s If-None-Match %s: %d, %d bytes; want 304", tc.path, inm, resp.StatusCode, len(out))
			}
		}
		if resp, _ = b.request(t, http.MethodGet, tc.path, nil, "If-None-Match", `"other"`); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s If-None-Match another: %d", tc.path, resp.StatusCode)
		}
	}
}

// heldETag is the ETag served for the held result of job id.
func heldETag(t *testing.T, b *testBundle, id string) string {
	t.Helper()
	resp, _ := b.request(t, http.MethodHead, "/jobs/"+id+"/artifacts/result.json", nil)
	return resp.Header.Get("ETag")
}

// An artifact is served as it is read: with its last chunk gone, HEAD and a range before
// it are answered, and a GET sends every byte before it, then ends short of its
// Content-Length, where a handler that read the object whole first could send nothing.
// The client sees the answer cut, not a hang.
func TestArtifactServedAsRead(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	data := largeArtifact(700_000)
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[]}`)
	finishJob(t, b.Broker.Store, id, nil, map[string][2]string{"big.bin": {"application/octet-stream", string(data)}})
	js := b.Broker.JetStream(t)
	obs, err := js.ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := obs.GetInfo(ctx, id+"/big.bin")
	if err != nil || info.Chunks < 4 {
		t.Fatalf("big.bin: %+v, %v; want an object of several chunks", info, err)
	}
	st, err := js.Stream(ctx, "OBJ_"+broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	last, err := st.GetLastMsgForSubject(ctx, "$O."+broker.ArtifactsBucket+".C."+info.NUID)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteMsg(ctx, last.Sequence); err != nil {
		t.Fatal(err)
	}
	path := "/jobs/" + id + "/artifacts/big.bin"

	resp, _ := b.request(t, http.MethodHead, path, nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Length") != strconv.Itoa(len(data)) {
		t.Fatalf("HEAD: %d %v; want 200 with the whole length", resp.StatusCode, resp.Header)
	}
	resp, out := b.request(t, http.MethodGet, path, nil, "Range", "bytes=100-1099")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(out, data[100:1100]) {
		t.Fatalf("range: %d, %d bytes; want 206 and the part", resp.StatusCode, len(out))
	}

	resp = b.send(t, http.MethodGet, path, nil)
	defer resp.Body.Close()
	out, err = io.ReadAll(resp.Body)
	sent := len(data) - len(last.Data)
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(data)) {
		t.Fatalf("GET: %d, Content-Length %d; want 200 and %d", resp.StatusCode, resp.ContentLength, len(data))
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) || !bytes.Equal(out, data[:sent]) {
		t.Fatalf("GET: %d bytes, %v; want the %d before the missing chunk, then the answer cut", len(out), err, sent)
	}
}

// heldWriter is a client that reads nothing of its answer until the test lets it: the
// first Write of the body blocks until release is closed, and writing is closed then.
type heldWriter struct {
	header  http.Header
	status  int
	body    bytes.Buffer
	writing chan struct{}
	release chan struct{}
	once    sync.Once
}

func newHeldWriter() *heldWriter {
	return &heldWriter{header: http.Header{}, writing: make(chan struct{}), release: make(chan struct{})}
}

func (w *heldWriter) Header() http.Header  { return w.header }
func (w *heldWriter) WriteHeader(code int) { w.status = code }

func (w *heldWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.writing) })
	<-w.release
	return w.body.Write(p)
}

// Artifact bodies sent at once are capped: with the cap's downloads held open by clients
// (of two programs) that read nothing, the next GET is refused at once with 503, Retry-After and a JSON
// error (counted as a refusal), while HEAD, 304 and 416, which send no body, are still
// answered; once a held download ends, its slot serves the next GET whole.
func TestArtifactDownloadsAreCapped(t *testing.T) {
	t.Parallel()
	const held = 2
	b := newTestBundle(t, withGateway(func(c *Config) { c.artifactReads = held }))
	ctx := testCtx(t, 30*time.Second)
	data := largeArtifact(300_000)
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[]}`)
	finishJob(t, b.Broker.Store, id, nil, map[string][2]string{"big.bin": {"application/octet-stream", string(data)}})
	path := "/jobs/" + id + "/artifacts/big.bin"

	writers := make([]*heldWriter, held)
	dones := make([]chan struct{}, held)
	for i := range held {
		w, done := newHeldWriter(), make(chan struct{})
		writers[i], dones[i] = w, done
		// Two programs: one alone holds half of the places (ADR-0126).
		req := httptest.NewRequestWithContext(ctx, http.MethodGet, path, nil)
		req.Header.Set(HeaderProgram, fmt.Sprint("holder-", i))
		go func() {
			defer close(done)
			b.GW.ServeHTTP(w, req)
		}()
		t.Cleanup(func() {
			select {
			case <-w.release:
			default:
				close(w.release)
			}
			<-done
		})
		select {
		case <-w.writing:
			if w.status != http.StatusOK {
				t.Fatalf("download %d: %d %v; want its body held", i, w.status, w.header)
			}
		case <-done:
			t.Fatalf("download %d ended before its body was held: %d %v", i, w.status, w.header)
		case <-ctx.Done():
			t.Fatalf("download %d: no body began", i)
		}
	}

	resp, out := b.request(t, http.MethodGet, path, nil)
	var refusal struct{ Error string }
	if err := json.Unmarshal(out, &refusal); err != nil || resp.StatusCode != http.StatusServiceUnavailable ||
		!strings.Contains(refusal.Error, "too many artifact downloads") || resp.Header.Get("Retry-After") != "5" ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") || resp.Header.Get("ETag") != "" {
		t.Fatalf("GET past the cap: %d %v %.200q; want 503 with Retry-After and a JSON error", resp.StatusCode, resp.Header, out)
	}
	if got := metricValue(scrape(t, b), "foreman_requests_refused_total", "reason", "artifact_downloads"); got != 1 {
		t.Errorf("foreman_requests_refused_total{reason=artifact_downloads} = %v, want 1", got)
	}
	resp, _ = b.request(t, http.MethodHead, path, nil)
	etag := resp.Header.Get("ETag")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Length") != strconv.Itoa(len(data)) || etag == "" {
		t.Errorf("HEAD at the cap: %d %v; want 200", resp.StatusCode, resp.Header)
	}
	if resp, _ = b.request(t, http.MethodGet, path, nil, "If-None-Match", etag); resp.StatusCode != http.StatusNotModified {
		t.Errorf("GET If-None-Match at the cap: %d; want 304", resp.StatusCode)
	}
	if resp, _ = b.request(t, http.MethodGet, path, nil, "Range", "bytes=999999-"); resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("GET past the end at the cap: %d; want 416", resp.StatusCode)
	}

	close(writers[0].release)
	<-dones[0]
	if w := writers[0]; w.status != http.StatusOK || !bytes.Equal(w.body.Bytes(), data) {
		t.Fatalf("held download: %d, %d of %d bytes", w.status, w.body.Len(), len(data))
	}
	resp, out = b.request(t, http.MethodGet, path, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(out, data) {
		t.Fatalf("GET after a download ended: %d, %d of %d bytes; want the artifact", resp.StatusCode, len(out), len(data))
	}
}

package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// holdDownload starts a GET of path by a client that reads nothing of its body (hdr:
// header name/value pairs) and returns once its answer began: w.status is then the
// answer's status, a 200 held open until the test ends or closes w.release, or a refusal,
// whose JSON body w holds once released.
func holdDownload(t *testing.T, b *testBundle, ctx context.Context, path string, hdr ...string) (w *heldWriter, done chan struct{}) {
	t.Helper()
	w, done = newHeldWriter(), make(chan struct{})
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
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
	case <-done:
	case <-ctx.Done():
		t.Fatalf("GET %s %v: no answer began", path, hdr)
	}
	return w, done
}

// refusedBody releases a held refusal and returns its JSON error.
func refusedBody(t *testing.T, w *heldWriter, done chan struct{}) string {
	t.Helper()
	close(w.release)
	<-done
	var e struct{ Error string }
	if err := json.Unmarshal(w.body.Bytes(), &e); err != nil {
		t.Fatalf("refusal body %q: %v", w.body.Bytes(), err)
	}
	return e.Error
}

// One program cannot hold every artifact download place (ADR-0126): a program that opens
// as many downloads as there are places, reading none of them, gets half; the rest are
// refused with 503 and Retry-After, naming the program, while another program's download
// (and the anonymous program's) is served whole. Each newcomer gets half of what is left,
// so only when several programs hold places is the whole cap reached, and then the
// refusal says so.
func TestArtifactDownloadsLeaveOtherProgramsPlaces(t *testing.T) {
	t.Parallel()
	const places = 4
	b := newTestBundle(t, withGateway(func(c *Config) { c.artifactReads = places }))
	ctx := testCtx(t, 30*time.Second)
	data := largeArtifact(300_000)
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[]}`)
	finishJob(t, b.Broker.Store, id, nil, map[string][2]string{"big.bin": {"application/octet-stream", string(data)}})
	path := "/jobs/" + id + "/artifacts/big.bin"

	var served, refused int
	for i := range places {
		w, done := holdDownload(t, b, ctx, path, HeaderProgram, "alpha")
		switch w.status {
		case http.StatusOK:
			served++
		case http.StatusServiceUnavailable:
			refused++
			if w.header.Get("Retry-After") != "5" {
				t.Errorf("alpha's download %d refused without Retry-After: %v", i, w.header)
			}
			if msg := refusedBody(t, w, done); !strings.Contains(msg, "too many artifact downloads") || !strings.Contains(msg, `program "alpha"`) {
				t.Errorf("alpha's download %d refused with %q; want its program's share named", i, msg)
			}
		default:
			t.Fatalf("alpha's download %d: %d", i, w.status)
		}
	}
	if served != places/2 || refused != places/2 {
		t.Errorf("alpha, reading nothing, holds %d of %d places (%d refused); want half", served, places, refused)
	}

	resp, out := b.request(t, http.MethodGet, path, nil, HeaderProgram, "two words")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(out), `"error":"X-Foreman-Program: `) {
		t.Errorf("GET with a malformed %s: %d %.200q; want a 400 naming it", HeaderProgram, resp.StatusCode, out)
	}
	for _, hdr := range [][]string{{HeaderProgram, "beta"}, nil} {
		resp, out := b.request(t, http.MethodGet, path, nil, hdr...)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(out, data) {
			t.Fatalf("GET %v while alpha holds its downloads: %d %.200q; want the artifact", hdr, resp.StatusCode, out)
		}
	}

	// beta then gets half of the 2 places left (its second download is refused), gamma
	// the last one: now every place is held, by several programs, and a fourth program
	// is refused for the whole cap.
	for _, d := range []struct {
		program string
		status  int
	}{{"beta", http.StatusOK}, {"beta", http.StatusServiceUnavailable}, {"gamma", http.StatusOK}} {
		if w, _ := holdDownload(t, b, ctx, path, HeaderProgram, d.program); w.status != d.status {
			t.Fatalf("%s's held download: %d; want %d", d.program, w.status, d.status)
		}
	}
	w, done := holdDownload(t, b, ctx, path, HeaderProgram, "delta")
	if w.status != http.StatusServiceUnavailable {
		t.Fatalf("delta's download with every place held: %d; want 503", w.status)
	}
	if msg := refusedBody(t, w, done); !strings.Contains(msg, "foreman sends at most 4 artifact bodies at once") {
		t.Errorf("delta refused with %q; want the whole cap named", msg)
	}
	if got := metricValue(scrape(t, b), "foreman_requests_refused_total", "reason", "artifact_downloads"); got != places/2+2 {
		t.Errorf("foreman_requests_refused_total{reason=artifact_downloads} = %v, want %d", got, places/2+2)
	}
}

// With named tokens a download's program is its token's: X-Foreman-Program cannot make a
// token's holder several programs, so it holds one share, and another token's download
// is served.
func TestArtifactShareIsTheNamedTokens(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) {
		c.artifactReads = 2
		c.AuthTokens = []NamedToken{{Program: "alice", Token: "tok-alice"}, {Program: "bob", Token: "tok-bob"}}
	}))
	ctx := testCtx(t, 30*time.Second)
	data := largeArtifact(300_000)
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[]}`, "Authorization", "Bearer tok-alice")
	finishJob(t, b.Broker.Store, id, nil, map[string][2]string{"big.bin": {"application/octet-stream", string(data)}})
	path := "/jobs/" + id + "/artifacts/big.bin"

	if w, _ := holdDownload(t, b, ctx, path, "Authorization", "Bearer tok-alice", HeaderProgram, "x1"); w.status != http.StatusOK {
		t.Fatalf("alice's first download: %d; want 200", w.status)
	}
	w, done := holdDownload(t, b, ctx, path, "Authorization", "Bearer tok-alice", HeaderProgram, "x2")
	if w.status != http.StatusServiceUnavailable {
		t.Fatalf("alice's second download, as another X-Foreman-Program: %d; want 503", w.status)
	}
	if msg := refusedBody(t, w, done); !strings.Contains(msg, `program "alice"`) {
		t.Errorf("alice refused with %q; want her token's program named", msg)
	}
	resp, out := b.request(t, http.MethodGet, path, nil, "Authorization", "Bearer tok-bob")
	if resp.StatusCode != http.StatusOK || !bytes.Equal(out, data) {
		t.Fatalf("bob's GET while alice holds her share: %d %.200q; want the artifact", resp.StatusCode, out)
	}
}

// Every artifact answer gives its place back, once (ADR-0065, ADR-0126): after a whole
// GET, a range, HEAD, 304, 416, a missing artifact, a malformed X-Foreman-Program and a
// client that leaves part way, no place is held and no program is counted as holding
// one; each program's share is whole again.
func TestArtifactPlacesComeBackOnEveryAnswer(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.artifactReads = 2 }), withSendBuffer(4096))
	ctx := testCtx(t, 30*time.Second)
	data := largeArtifact(2 << 20)
	id := jobsSubmit(t, b, `{"model":"tiny-a","messages":[]}`)
	finishJob(t, b.Broker.Store, id, nil, map[string][2]string{"big.bin": {"application/octet-stream", string(data)}})
	path := "/jobs/" + id + "/artifacts/big.bin"
	places := b.GW.artifactReads
	idle := func() bool {
		places.mu.Lock()
		defer places.mu.Unlock()
		return places.used == 0 && len(places.held) == 0
	}

	resp, _ := b.request(t, http.MethodHead, path, nil, HeaderProgram, "alpha")
	etag := resp.Header.Get("ETag")
	for _, c := range []struct {
		method string
		path   string
		status int
		hdr    []string
	}{
		{http.MethodGet, path, http.StatusOK, nil},
		{http.MethodGet, path, http.StatusPartialContent, []string{"Range", "bytes=5-9"}},
		{http.MethodHead, path, http.StatusOK, nil},
		{http.MethodGet, path, http.StatusNotModified, []string{"If-None-Match", etag}},
		{http.MethodGet, path, http.StatusRequestedRangeNotSatisfiable, []string{"Range", "bytes=99999999-"}},
		{http.MethodGet, "/jobs/" + id + "/artifacts/none.bin", http.StatusNotFound, nil},
		{http.MethodGet, path, http.StatusBadRequest, []string{HeaderProgram, "two words"}},
	} {
		for _, program := range []string{"alpha", ""} {
			hdr := c.hdr
			if program != "" && c.status != http.StatusBadRequest {
				hdr = append([]string{HeaderProgram, program}, hdr...)
			}
			if resp, out := b.request(t, c.method, c.path, nil, hdr...); resp.StatusCode != c.status {
				t.Fatalf("%s %s %v: %d %.200q; want %d", c.method, c.path, hdr, resp.StatusCode, out, c.status)
			}
			// The client has the whole answer before its handler has returned.
			eventually(t, 5*time.Second, fmt.Sprintf("no place held after %s %s %v (%d)", c.method, c.path, hdr, c.status), idle)
		}
	}

	// A client that reads a little of a large download and leaves: its place comes back
	// once the handler sees it gone.
	for range 3 {
		rctx, cancel := context.WithCancel(ctx)
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, b.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(HeaderProgram, "alpha")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := resp.Body.Read(make([]byte, 100)); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("a download begun: %d, %v", resp.StatusCode, err)
		}
		cancel()
		resp.Body.Close()
		eventually(t, 10*time.Second, "the place of a download its client left comes back", idle)
	}
	// alpha's share is whole: it holds its half (1 of 2) again.
	w, _ := holdDownload(t, b, ctx, path, HeaderProgram, "alpha")
	if w.status != http.StatusOK {
		t.Fatalf("alpha's download after its others ended: %d; want 200", w.status)
	}
}

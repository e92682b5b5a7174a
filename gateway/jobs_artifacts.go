package gateway

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// handleArtifact serves an artifact's bytes with its stored content type, as they are
// read from the store: a chunk at a time, never the whole artifact in memory. HEAD reads
// none of them. One range (`Range: bytes=`) is a 206 with that part; several are
// answered with the whole artifact (200), as a server may, and each part read from the
// object's start would cost a read of it. The ETag is the bytes' digest, so
// If-None-Match (304) and If-Range hold across the record's copy of a result and its
// object alike. At most Config.artifactReads bodies are sent at once (ADR-0065), and a
// program holds at most half of the places the others leave (ADR-0126): past either a
// GET is refused with 503; HEAD, 304 and 416 send none and are always answered.
func (s *Server) handleArtifact(w http.ResponseWriter, r *http.Request) {
	id, name := r.PathValue("id"), r.PathValue("name")
	if err := broker.ValidateID(id); err != nil {
		s.writeError(w, r, err)
		return
	}
	program, err := requestProgram(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f, err := s.store.OpenArtifact(r.Context(), id, name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	etag := ""
	if f.Digest != "" {
		etag = `"` + f.Digest + `"`
	}
	h := w.Header()
	if etag != "" && etagListed(r.Header.Get("If-None-Match"), etag) {
		artifactHeaders(h, f, etag)
		w.WriteHeader(http.StatusNotModified)
		return
	}
	off, n, status := int64(0), f.Size, http.StatusOK
	// Range is defined for GET alone (RFC 9110 14.2); an If-Range that is not the
	// artifact's ETag asks for the whole of a changed artifact.
	if rng := r.Header.Get("Range"); rng != "" && r.Method == http.MethodGet && ifRangeHolds(r.Header.Get("If-Range"), etag) {
		switch o, l, kind := byteRange(rng, f.Size); kind {
		case rangeOne:
			off, n, status = o, l, http.StatusPartialContent
		case rangeBeyond:
			artifactHeaders(h, f, etag)
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", f.Size))
			s.writeError(w, r, refuse(ErrRangeNotSatisfiable, fmt.Sprintf("range not satisfiable: %s has %d bytes", name, f.Size)))
			return
		}
	}
	if r.Method != http.MethodHead {
		release, err := s.artifactReads.take(program)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		defer release()
	}
	artifactHeaders(h, f, etag)
	if status == http.StatusPartialContent {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, f.Size))
	}
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	rd := &readFailure{r: f.Reader(r.Context(), off, n)}
	if _, err := io.Copy(w, rd); err != nil && rd.err != nil {
		// The client was promised Content-Length: net/http closes the connection on an
		// answer that ends short of it, so the client sees a cut answer, not a hang.
		s.log.Warn("artifact read failed while served", "job_id", id, "artifact", name, "sent", rd.n, "of", n, "err", err)
	}
}

// artifactHeaders sets the headers that describe artifact f, whatever part of it is sent.
func artifactHeaders(h http.Header, f *broker.ArtifactFile, etag string) {
	ct := f.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	h.Set("Content-Type", ct)
	// An artifact is the target's output, not foreman's page: never sniff or run it.
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "sandbox")
	h.Set("Accept-Ranges", "bytes")
	if etag != "" {
		h.Set("ETag", etag)
	}
}

// maxArtifactReads is how many artifact bodies are sent at once, all clients together
// (ADR-0065). Each holds a chunk of its object (up to 128 KiB), a goroutine and a
// connection for as long as its client reads, which a client decides: 64 hold 8 MiB of
// chunks at most.
const maxArtifactReads = 64

// errArtifactReadsFull is an artifact download refused as maxArtifactReads are being
// sent, or as its program holds its share of them.
var errArtifactReadsFull = errors.New("artifact downloads over their cap")

// artifactPlaces are the places of the artifact bodies being sent (ADR-0065), shared
// among programs (ADR-0126): a program takes a place only while it holds fewer than are
// left free, that is at most half of the places the other programs leave it (half of
// them when it is alone). A program that opens downloads and reads nothing of them
// stops at its share, and the next program gets half of what is left: every place is
// held only once about log2(limit)+1 programs hold some.
type artifactPlaces struct {
	mu    sync.Mutex
	limit int
	used  int
	held  map[string]int // per program with a place; a program holding none is not kept
}

func newArtifactPlaces(limit int) *artifactPlaces {
	return &artifactPlaces{limit: limit, held: map[string]int{}}
}

// take takes a place for program and returns its release (call it once), or the 503
// refusal: every place held, or program holding as many as are left free.
func (p *artifactPlaces) take(program string) (release func(), err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	free, mine := p.limit-p.used, p.held[program]
	switch {
	case free <= 0:
		return nil, fmt.Errorf("%w: %w", errArtifactReadsFull, refuse(ErrUnavailable, fmt.Sprintf(
			"too many artifact downloads: foreman sends at most %d artifact bodies at once; retry shortly", p.limit)))
	case mine >= free:
		return nil, fmt.Errorf("%w: %w", errArtifactReadsFull, refuse(ErrUnavailable, fmt.Sprintf(
			"too many artifact downloads of %s: it is sent %d artifact bodies at once, and a program holds at most as many as are left free for the others (%d of %d); retry shortly",
			programName(program), mine, free, p.limit)))
	}
	p.used++
	p.held[program] = mine + 1
	var once sync.Once
	return func() { once.Do(func() { p.give(program) }) }, nil
}

func (p *artifactPlaces) give(program string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.used--
	if p.held[program]--; p.held[program] <= 0 {
		delete(p.held, program)
	}
}

// readFailure remembers the error of its reader other than io.EOF: what io.Copy returns
// may be the client's (gone, or cut off by WriteTimeout), which is not worth a warning.
type readFailure struct {
	r   io.Reader
	n   int64
	err error
}

func (rf *readFailure) Read(p []byte) (int, error) {
	n, err := rf.r.Read(p)
	rf.n += int64(n)
	if err != nil && err != io.EOF {
		rf.err = err
	}
	return n, err
}

type rangeKind int

const (
	rangeWhole  rangeKind = iota // no single range foreman serves: send the whole artifact
	rangeOne                     // one satisfiable range
	rangeBeyond                  // a range wholly past the end: 416
)

// byteRange reads a Range header against an artifact of size bytes: one range of the
// bytes unit gives its offset and length. Several ranges, another unit or a malformed
// value are rangeWhole (RFC 9110 lets a server ignore Range); a range that starts at or
// past the end, or a suffix of zero bytes, is rangeBeyond.
func byteRange(v string, size int64) (off, n int64, kind rangeKind) {
	spec, ok := strings.CutPrefix(v, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, rangeWhole
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, 0, rangeWhole
	}
	if first == "" { // the last bytes
		suffix, ok := rangeNumber(last)
		switch {
		case !ok:
			return 0, 0, rangeWhole
		case suffix == 0 || size == 0:
			return 0, 0, rangeBeyond
		}
		n = min(suffix, size)
		return size - n, n, rangeOne
	}
	start, ok := rangeNumber(first)
	if !ok {
		return 0, 0, rangeWhole
	}
	end := size - 1
	if last != "" {
		if end, ok = rangeNumber(last); !ok || end < start {
			return 0, 0, rangeWhole
		}
	}
	if start >= size {
		return 0, 0, rangeBeyond
	}
	end = min(end, size-1)
	return start, end - start + 1, rangeOne
}

// rangeNumber is a range's position: decimal digits only (strconv would take a sign).
func rangeNumber(s string) (int64, bool) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil
}

// etagListed reports whether an If-None-Match value names etag, compared weakly (a W/
// prefix is ignored), or is "*".
func etagListed(list, etag string) bool {
	for tag := range strings.SplitSeq(list, ",") {
		tag = strings.TrimSpace(tag)
		if tag == "*" || strings.TrimPrefix(tag, "W/") == etag {
			return true
		}
	}
	return false
}

// ifRangeHolds reports whether a Range may be served under an If-Range value: none, or
// the artifact's strong ETag. A date never holds: artifacts carry no Last-Modified.
func ifRangeHolds(v, etag string) bool {
	return v == "" || (etag != "" && strings.TrimSpace(v) == etag)
}

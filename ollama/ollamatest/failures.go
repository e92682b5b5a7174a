package ollamatest

import (
	"fmt"
	"net/http"
	"time"
)

type failureKind int

const (
	kindStatus failureKind = iota + 1
	kindDrop
	kindDropMid
	kindSlow
	kindNoDone
	kindStreamErr
	kindHang
	kindStallMid
	kindNotOllama
	kindAnswer
	kindDrip
)

// Failure is a fault the fake injects into a response; see FailNext.
type Failure struct {
	kind  failureKind
	code  int
	msg   string
	ctype string // the Content-Type of BadAnswer
	delay time.Duration
	gone  <-chan struct{} // the request's context ended (set per request by wrap)
}

var (
	// Fail500 answers HTTP 500 {"error":"fake: injected failure"}.
	Fail500 = Failure{kind: kindStatus, code: 500, msg: "fake: injected failure"}
	// DropConnection closes the TCP connection before any response byte.
	DropConnection = Failure{kind: kindDrop}
	// DropMidStream sends a couple of stream frames (or half a JSON body) and
	// then closes the TCP connection.
	DropMidStream = Failure{kind: kindDropMid}
	// Hang accepts the request and never answers: no status, no header, no byte, until
	// the client goes away (a runner wedged before its first token, a load that never ends).
	Hang = Failure{kind: kindHang}
	// StallMidStream sends the status, the headers and a couple of stream frames (or half
	// a JSON body) and then sends nothing more, keeping the connection open, until the
	// client goes away.
	StallMidStream = Failure{kind: kindStallMid}
	// NotOllama answers 200 with an HTML page, as another server on Ollama's port (or a
	// proxy's error page) does.
	NotOllama = Failure{kind: kindNotOllama}
	// StreamNoDone streams the tokens and ends the response cleanly without
	// the final done:true frame, as real Ollama sometimes does (on /v1/responses and
	// /v1/messages, without the events that close the stream). A non-streamed native chat
	// or generate gets what Ollama answers then: the last line, done:false, with the
	// texts joined.
	StreamNoDone = Failure{kind: kindNoDone}
)

// FailStatus answers HTTP code with {"error": msg}; on /v1/responses and /v1/messages in
// the error shape Ollama's middleware gives its chat handler's errors there (OpenAI's,
// typed api_error; Anthropic's, typed by code).
func FailStatus(code int, msg string) Failure { return Failure{kind: kindStatus, code: code, msg: msg} }

// StreamError streams the tokens and then, instead of the final done:true frame, an error
// frame — {"error": msg}, or on the OpenAI routes data: {"error":{"message": msg}} — with
// status 200, as real Ollama does when its runner fails mid-generation. On /v1/responses and
// /v1/messages, whose Ollama writers drop that error frame, it acts as StreamNoDone: the
// stream ends after the tokens without its closing events. A non-streamed native chat or
// generate gets status 500 with {"error": msg} instead, as from Ollama.
func StreamError(msg string) Failure { return Failure{kind: kindStreamErr, msg: msg} }

// BadAnswer answers 200 with body as contentType in place of the route's answer: what a
// proxy routed to the wrong port, or another service on Ollama's, sends (say "text/plain",
// "Ollama is running"), or a stream of garbage (ollama.ContentTypeNDJSON, "garbage\n").
func BadAnswer(contentType, body string) Failure {
	return Failure{kind: kindAnswer, code: 200, ctype: contentType, msg: body}
}

// StatusAnswer answers code with body as contentType: an error body in a shape FailStatus
// does not write, such as the OpenAI one Ollama's /v1/chat/completions middleware
// rewrites its chat handler's errors into (v0.17.4 openai.NewError, status kept).
func StatusAnswer(code int, contentType, body string) Failure {
	return Failure{kind: kindAnswer, code: code, ctype: contentType, msg: body}
}

// ProxyError answers code (502, 504) with nginx's error page for it, as nginx in front
// of Ollama does when Ollama refuses its connection (502 Bad Gateway) or does not answer
// it in time (504 Gateway Timeout).
func ProxyError(code int) Failure {
	text := fmt.Sprintf("%d %s", code, http.StatusText(code))
	page := "<html>\r\n<head><title>" + text + "</title></head>\r\n<body>\r\n<center><h1>" + text +
		"</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
	return Failure{kind: kindAnswer, code: code, ctype: "text/html", msg: page}
}

// Drip answers 200 as a stream (NDJSON; an event stream on the /v1 routes) and then
// sends unit every every, flushed, until the client goes away: a slowloris target that
// is never silent yet never answers. A unit without a line end ("a") is a line that never
// ends; "\n" a blank line at each step, which no client reads as anything.
func Drip(every time.Duration, unit string) Failure {
	return Failure{kind: kindDrip, delay: every, msg: unit}
}

// SlowFirstByte waits d (or until the client leaves) before serving normally.
func SlowFirstByte(d time.Duration) Failure { return Failure{kind: kindSlow, delay: d} }

func (f Failure) String() string {
	switch f.kind {
	case kindStatus:
		return fmt.Sprintf("status %d", f.code)
	case kindDrop:
		return "drop connection"
	case kindDropMid:
		return "drop mid-stream"
	case kindSlow:
		return fmt.Sprintf("slow first byte %s", f.delay)
	case kindNoDone:
		return "stream without done"
	case kindStreamErr:
		return "error inside the stream"
	case kindHang:
		return "hang"
	case kindStallMid:
		return "stall mid-stream"
	case kindNotOllama:
		return "not ollama"
	case kindDrip:
		return fmt.Sprintf("drip %q every %s", f.msg, f.delay)
	case kindAnswer:
		if f.code != http.StatusOK {
			return fmt.Sprintf("status %d as %s", f.code, f.ctype)
		}
		return fmt.Sprintf("bad answer %s", f.ctype)
	}
	return "none"
}

type pendingFailure struct {
	path string // "" = any inference path
	left int
	f    Failure
}

// FailNext applies f to the next n inference requests (chat, generate,
// completions, responses, messages, embeddings). Metadata routes such as /api/tags are not affected;
// use FailNextOn for them.
func (s *Server) FailNext(n int, f Failure) { s.FailNextOn("", n, f) }

// FailNextOn applies f to the next n requests on path ("" = inference paths).
func (s *Server) FailNextOn(path string, n int, f Failure) {
	if n <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = append(s.failures, pendingFailure{path: path, left: n, f: f})
}

// takeFailureLocked consumes the first pending failure matching path.
func (s *Server) takeFailureLocked(path string) *Failure {
	for i := range s.failures {
		p := &s.failures[i]
		if p.path == path || (p.path == "" && isInference(path)) {
			f := p.f
			p.left--
			if p.left == 0 {
				s.failures = append(s.failures[:i], s.failures[i+1:]...)
			}
			return &f
		}
	}
	return nil
}

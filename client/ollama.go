package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
)

// The headers of foreman's early job id (gateway.HeaderEarlyJobID).
const (
	earlyJobIDHeader = "X-Foreman-Early-Job-Id"
	jobIDHeader      = "X-Foreman-Job-Id"
	// headerProgram names the program of a request that carries no body to name it in
	// (gateway.HeaderProgram).
	headerProgram = "X-Foreman-Program"
)

// Chat runs a chat through foreman's queue (POST /api/chat). Unless req.Stream is false
// the reply streams: fn (optional) gets every chunk as it arrives and Chat returns the
// whole reply, its content joined, in the shape Ollama gives for stream:false. An error
// the server reports in the middle of a stream is an *APIError with the stream's status;
// a success answer that does not begin as Ollama's chunks do (a captive portal's page,
// another server's JSON, an empty body) is a *ForeignAnswerError, fn never called. Under
// WithAnswerTimeout, an answer silent that long (its job waiting in the queue) is checked
// on, and a check foreman leaves unanswered ends the call with a *NoAnswerError.
func (c *Client) Chat(ctx context.Context, req ChatRequest, fn func(*ChatResponse) error) (*ChatResponse, error) {
	var final ChatResponse
	var content, thinking bytes.Buffer
	chunks := 0
	err := c.stream(ctx, "/api/chat", req, func(line []byte) error {
		var r ChatResponse
		if err := decodeChunk(line, &r); err != nil {
			return fmt.Errorf("client: decode chat chunk: %w", err)
		}
		chunks++
		if fn != nil {
			if err := fn(&r); err != nil {
				return err
			}
		}
		content.WriteString(r.Message.Content)
		thinking.WriteString(r.Message.Thinking)
		final = r
		return nil
	})
	if err != nil {
		return nil, err
	}
	if chunks == 0 || final.Model == "" {
		return nil, errNoChunk("/api/chat")
	}
	final.Message.Content, final.Message.Thinking = content.String(), thinking.String()
	return &final, nil
}

// Generate runs a completion through foreman's queue (POST /api/generate), streamed to fn
// like Chat; it returns the whole reply with the response text joined.
func (c *Client) Generate(ctx context.Context, req GenerateRequest, fn func(*GenerateResponse) error) (*GenerateResponse, error) {
	var final GenerateResponse
	var response, thinking bytes.Buffer
	chunks := 0
	err := c.stream(ctx, "/api/generate", req, func(line []byte) error {
		var r GenerateResponse
		if err := decodeChunk(line, &r); err != nil {
			return fmt.Errorf("client: decode generate chunk: %w", err)
		}
		chunks++
		if fn != nil {
			if err := fn(&r); err != nil {
				return err
			}
		}
		response.WriteString(r.Response)
		thinking.WriteString(r.Thinking)
		final = r
		return nil
	})
	if err != nil {
		return nil, err
	}
	if chunks == 0 || final.Model == "" {
		return nil, errNoChunk("/api/generate")
	}
	final.Response, final.Thinking = response.String(), thinking.String()
	return &final, nil
}

// errNoChunk is the error of an answer to path whose last chunk names no model, as each
// of Ollama's does (one that names none from its first is a *ForeignAnswerError). An
// answer cut short after some chunks is returned as it came, its Done false: Ollama
// itself may end a stream without its last chunk (it stops a generation that keeps
// repeating itself).
func errNoChunk(path string) error {
	return fmt.Errorf("client: POST %s: the answer's last chunk is not one of Ollama's (it names no model)", path)
}

// foreignChunk reports whether l, an answer's first line, shows the answer is not
// Ollama's (so not foreman's): it is no JSON object (a page, plain text, an array, null),
// or an object naming no model, which every chunk of Ollama's names. An object that does
// not decode is left to the chunk's decoding to say.
func foreignChunk(l []byte) bool {
	if len(l) == 0 || l[0] != '{' {
		return true
	}
	var c struct {
		Model *string `json:"model"`
	}
	return json.Unmarshal(l, &c) == nil && (c.Model == nil || *c.Model == "")
}

// decodeChunk decodes one chunk of a chat or generate answer, which must be a JSON object
// (json.Unmarshal takes a null as a zero chunk).
func decodeChunk(line []byte, v any) error {
	if len(line) == 0 || line[0] != '{' {
		return fmt.Errorf("not a JSON object: %.40q", line)
	}
	return json.Unmarshal(line, v)
}

// Embed computes embeddings (POST /api/embed; foreman passes embeddings straight through).
func (c *Client) Embed(ctx context.Context, req EmbedRequest) (*EmbedResponse, error) {
	var out EmbedResponse
	if err := c.doJSON(ctx, http.MethodPost, "/api/embed", req, &out, maxTargetAnswer); err != nil {
		return nil, err
	}
	return &out, nil
}

// Tags lists the models installed on the Ollama server (GET /api/tags).
func (c *Client) Tags(ctx context.Context) (*ListResponse, error) {
	var out ListResponse
	if err := c.doJSON(ctx, http.MethodGet, "/api/tags", nil, &out, maxTargetAnswer); err != nil {
		return nil, err
	}
	return &out, nil
}

// Ps lists the models loaded in memory (GET /api/ps).
func (c *Client) Ps(ctx context.Context) (*ProcessResponse, error) {
	var out ProcessResponse
	if err := c.doJSON(ctx, http.MethodGet, "/api/ps", nil, &out, maxTargetAnswer); err != nil {
		return nil, err
	}
	return &out, nil
}

// stream posts body to path and calls line for every NDJSON line of the answer (a
// stream:false answer is one line). A line {"error": "..."} ends the stream as an *APIError;
// an answer that holds no line, or whose first line is no chunk of Ollama's
// (foreignChunk), is a *ForeignAnswerError, as a non-streamed call's is (decodeObject).
func (c *Client) stream(ctx context.Context, path string, body any, line func([]byte) error) error {
	if c.answerTimeout <= 0 {
		return c.streamAnswer(ctx, path, body, line, nil)
	}
	w := c.watchSilence(ctx)
	defer w.stop() // should line panic, the watch ends all the same (stop again is a no-op)
	err := c.streamAnswer(w.ctx, path, body, line, w)
	if werr := w.stop(); err != nil && werr != nil {
		return werr // the stream ended as foreman answered nothing
	}
	return err
}

// streamAnswer is stream, told to silence (when not nil) of every sign of foreman.
func (c *Client) streamAnswer(ctx context.Context, path string, body any, line func([]byte) error, silence *silenceWatch) error {
	data, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("client: encode request: %w", err)
	}
	var hdr http.Header
	if c.onQueued != nil {
		// Asked for only then: a proxy in front of foreman may mishandle a 1xx answer,
		// and a silence watch learns the job from the answer's headers, or checks
		// /healthz until then.
		hdr = http.Header{earlyJobIDHeader: {"1"}}
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				id := h.Get(jobIDHeader)
				if code != http.StatusEarlyHints || id == "" {
					return nil
				}
				if silence != nil {
					silence.heardFrom(id)
				}
				if c.onQueued != nil {
					c.onQueued(id)
				}
				return nil
			},
		})
	}
	resp, err := c.request(ctx, http.MethodPost, path, data, hdr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var answer io.Reader = resp.Body
	if silence != nil {
		silence.heardFrom(resp.Header.Get(jobIDHeader))
		answer = heardReader{r: resp.Body, w: silence}
	}
	// A line, and the whole answer, have bounds: Chat and Generate keep the answer.
	head := &headReader{r: answer, left: 4 * rawExcerpt}
	rd := &boundedReader{r: head, left: maxStream}
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 0, 64<<10), maxStreamLine)
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		// After a read error the scanner would hand out the line it holds, cut where the
		// answer broke off (the connection cut, ctx ended): the answer is cut short, not
		// a chunk that does not decode.
		if atEOF && len(data) > 0 && bytes.IndexByte(data, '\n') < 0 {
			if rd.err != nil {
				return 0, nil, rd.err
			}
			// A body can end cleanly inside a line: one delimited by the connection's
			// close (HTTP/1.0, Connection: close) wherever it closed, any body where the
			// server ended it mid-line. A last line without its newline that begins an
			// object is whole (a stream:false answer) only if it is whole JSON; white
			// space, or what is no object at all, is left to the reading of lines.
			if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '{' && !json.Valid(t) {
				return 0, nil, errEndsInsideALine
			}
		}
		return bufio.ScanLines(data, atEOF)
	})
	lines := 0
	for sc.Scan() {
		if rd.left < 0 {
			// A line that came past the whole answer's bound is not handed on.
			break
		}
		l := bytes.TrimSpace(sc.Bytes())
		if len(l) == 0 {
			continue
		}
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(l, &e) == nil && e.Error != "" {
			return &APIError{Status: resp.StatusCode, Message: e.Error}
		}
		if lines == 0 && foreignChunk(l) {
			return c.foreignAnswer(resp, head.data, http.MethodPost, path)
		}
		lines++
		if err := line(l); err != nil {
			return err
		}
	}
	switch err := sc.Err(); {
	case err == nil && lines == 0:
		return c.foreignAnswer(resp, head.data, http.MethodPost, path)
	case err == nil:
		return nil
	case errors.Is(err, bufio.ErrTooLong):
		return fmt.Errorf("client: POST %s: %w (a line of more than %d bytes)", path, ErrAnswerTooLarge, maxStreamLine)
	case errors.Is(err, errStreamTooLarge):
		return tooLarge(http.MethodPost, path, maxStream)
	default:
		return c.cutShort(ctx, err)
	}
}

// headReader reads r, keeping its first bytes (left of them) in data: the start of an
// answer that turns out foreign, for its error to show.
type headReader struct {
	r    io.Reader
	left int
	data []byte
}

func (h *headReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if k := min(n, h.left); k > 0 {
		h.data = append(h.data, p[:k]...)
		h.left -= k
	}
	return n, err
}

// errEndsInsideALine is the error of an answer that ended inside a line.
var errEndsInsideALine = fmt.Errorf("the answer ends inside a line: %w", io.ErrUnexpectedEOF)

// errStreamTooLarge is a boundedReader's error once its bound is passed.
var errStreamTooLarge = errors.New("stream too large")

// boundedReader reads r until left bytes have been read, then fails with
// errStreamTooLarge should r go on. err is the first error it returned other than io.EOF.
type boundedReader struct {
	r    io.Reader
	left int64
	err  error
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, errStreamTooLarge
	}
	// One byte past the bound tells a longer answer from one of exactly the bound.
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		err = errStreamTooLarge
	}
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

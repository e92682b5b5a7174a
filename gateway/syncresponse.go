package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// syncCheckInterval is how often a waiting response checks for lost messages and looks at
// the job record itself: a safety net for a final marker or state event that never
// arrives (a NATS reconnect loses core messages), so a request cannot hang forever.
const syncCheckInterval = 5 * time.Second

// outcome is how a sync response ended.
type outcome int

const (
	outcomeDone       outcome = iota // the answer was written completely
	outcomeError                     // the client got an error (status or in-stream)
	outcomeClientGone                // the client left; the job is to be canceled
	outcomeShutdown                  // foreman is stopping before the job ended; the job is to be canceled
	outcomeCanceled                  // foreman is stopping before the job started, and canceled it
	outcomeCutOff                    // the client read too slowly and was cut off; the job runs on
)

// jobEvents is what a sync response reads: a broker.JobFeed, or a test's hand-filled one.
type jobEvents interface {
	// Ready receives a signal when events may be waiting for Next.
	Ready() <-chan struct{}
	// Next returns the next event, or false when none is waiting now.
	Next() (broker.Event, bool)
	// Dropped counts messages lost because the response fell too far behind.
	Dropped() int
	// Overflow is closed once more than the feed's buffer waits for the client.
	Overflow() <-chan struct{}
	// Mend asks the job's runner for the stream's messages after those taken, lost on
	// the way (ADR-0078); they come through Next. It reports whether the runner is being
	// asked; false: the feed asks no more.
	Mend() bool
}

// syncResponse writes one sync job's answer to its HTTP client as the job's events
// (broker.JobFeed) come: status and headers, the frames, deadlines, an error in the
// stream's own format, and the cut-off of a client too slow for its answer.
type syncResponse struct {
	s      *Server
	w      http.ResponseWriter
	r      *http.Request
	rc     *http.ResponseController
	job    *broker.Job
	stream bool // the client asked for a streamed answer
	log    *slog.Logger

	checkEvery time.Duration
	check      func(ctx context.Context) (*broker.Job, error)
	outage     *outageWatch // nil: the response waits out any outage
	// finalGrace is how long a terminal state event of a job that ran waits for the
	// final marker (finalGrace, the constant, unless a test's).
	finalGrace time.Duration
	endedJob   *broker.Job // the terminal record that came ahead of the final marker

	frames   int    // frames written or held so far
	started  bool   // status and headers are written
	ctype    string // the response's Content-Type once known
	pending  []byte // a non-streamed body, held until the final marker confirms it
	tail     []byte // the last bytes of the stream written so far (up to 3)
	last     []byte // the last streamed frame written that a client reads anything in (ollama.Holds), or that went on a line or an event left unfinished
	lastOwn  bool   // it began where a line (NDJSON) or an event (SSE) begins
	nextSeq  int64  // a Responses stream's sequence_number after the last one written
	terminal bool   // the watchdog saw the record terminal once already
}

// run writes the answer until the job's final marker, a terminal state, a gap, or the
// client leaving.
func (sr *syncResponse) run(ctx context.Context, feed jobEvents) outcome {
	tick := time.NewTicker(sr.checkEvery)
	defer tick.Stop()
	stopping := sr.s.stopping
	if sr.s.store == nil || !sr.s.store.Config().Exclusive {
		stopping = nil // another Mac may run the job before this foreman has stopped
	}
	var grace <-chan time.Time // set once a terminal state came ahead of the final marker
	for {
		if sr.endedJob != nil && grace == nil {
			t := time.NewTimer(sr.finalGrace)
			defer t.Stop()
			grace = t.C
		}
		select {
		case <-ctx.Done():
			return outcomeClientGone
		case <-grace:
			if sr.mend(feed, sr.endedJob) {
				grace = nil // waited for as long again
				continue
			}
			return sr.ended(sr.endedJob)
		case <-sr.s.ending:
			sr.fail(refuse(ErrUnavailable, "foreman is shutting down; the job was canceled, retry later"))
			return outcomeShutdown
		case <-stopping:
			stopping = nil
			if sr.stopping() {
				sr.fail(refuse(ErrUnavailable, "foreman is shutting down; the job was canceled, retry later"))
				return outcomeCanceled
			}
		case <-feed.Overflow():
			return sr.cutOff(fmt.Sprintf("more than %d bytes of the answer waited for the client", sr.s.cfg.StreamBuffer))
		case <-feed.Ready():
			for {
				select {
				case <-feed.Overflow():
					// Messages after the overflow are gone: cut off rather than report a gap.
					return sr.cutOff(fmt.Sprintf("more than %d bytes of the answer waited for the client", sr.s.cfg.StreamBuffer))
				default:
				}
				ev, ok := feed.Next()
				if !ok {
					break
				}
				if o, end := sr.handle(ev); end {
					return o
				}
			}
		case <-tick.C:
			if o, end := sr.watchdog(ctx, feed); end {
				return o
			}
		}
	}
}

// stopping cancels the job as foreman begins to stop, if nothing of it reached the
// client and it has not started (Store.CancelQueued), and reports whether it did: the
// stopping worker takes no job, and no other does on a store of its own. A job that
// started (or was called early, ADR-0034, and so sent a frame) runs on, and the response
// with it, until the job ends or AnswerWaiting.
func (sr *syncResponse) stopping() bool {
	if sr.frames > 0 || sr.started {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := sr.s.store.CancelQueued(ctx, sr.job.ID, "foreman shut down before the job ran")
	switch {
	case err == nil:
		sr.log.Info("job canceled", "reason", "foreman shut down before the job ran")
		return true
	case errors.Is(err, broker.ErrStarted), errors.Is(err, broker.ErrTerminal):
	default:
		sr.log.Warn("cancel a waiting job at shutdown", "err", err)
	}
	return false
}

// finalGrace is how long a sync response that saw its job's terminal state, the job
// having run, waits for the final marker and the frames before it (handle).
const finalGrace = 2 * time.Second

// finalMarkerComing reports whether a runner publishes a final marker for terminal job j,
// ahead of its terminal state: one did if the job ran, unless it was canceled while it
// waited between attempts (retrying, or queued again), which a canceler stores without a
// cancel request. No runner held the job then, and no final marker comes (ADR-0036: the
// caller ends on the canceled state), however long the response waited or the runner of
// its last attempt was asked (ADR-0078). A running job is canceled by request, which the
// worker ends with its final marker.
func finalMarkerComing(j *broker.Job) bool {
	if j.StartedAt == nil {
		return false
	}
	return j.State != broker.StateCanceled || j.CancelRequested != ""
}

// handle processes one event; end reports that the response is over.
func (sr *syncResponse) handle(ev broker.Event) (o outcome, end bool) {
	switch ev.Kind {
	case broker.EventState:
		if !ev.Job.State.Terminal() {
			return 0, false
		}
		if finalMarkerComing(ev.Job) && sr.finalGrace > 0 {
			// The job ran, so its worker published a final marker before this state. On
			// one NATS server it came first (one subscription keeps the connection's
			// order); on a cluster the state, republished by the jobs stream's leader on
			// another node, may overtake the runner's last frames and marker. They are
			// waited for a moment (run) before the answer is taken for broken.
			if sr.endedJob == nil {
				sr.endedJob = ev.Job
			}
			return 0, false
		}
		return sr.ended(ev.Job), true
	case broker.EventGap:
		return sr.gap(ev.Gap), true
	case broker.EventFinal:
		sr.s.traced(sr.job.ID, traceFinalSeen, time.Now())
		return sr.final(ev.Err), true
	}
	sr.frames++
	if err := sr.frame(ev); err != nil {
		return sr.writeFailed(err), true
	}
	if sr.frames == 1 {
		sr.s.traced(sr.job.ID, traceRelayed, time.Now())
	}
	return 0, false
}

// writeFailed is the outcome of a failed write: a client that made no progress within
// Config.WriteTimeout is cut off (its job runs on); any other failure means it left.
func (sr *syncResponse) writeFailed(err error) outcome {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return sr.cutOff(fmt.Sprintf("a write made no progress for %s", sr.s.cfg.WriteTimeout))
	}
	return outcomeClientGone
}

// cutOff ends the response of a client too slow for its answer. The job is not
// canceled: it runs on and its result stays under /jobs/{id}.
func (sr *syncResponse) cutOff(reason string) outcome {
	sr.s.syncs.cutOff.Add(1)
	sr.log.Warn("slow client cut off; the job runs on", "reason", reason, "frames", sr.frames)
	// The error line is a courtesy: a connection past its write deadline is closed, and
	// failing to tell the client must not turn the cut-off into a cancel.
	_ = sr.fail(refuse(ErrBadUpstream, "client too slow: "+reason+"; the job runs on, its result will be under /jobs/"+sr.job.ID))
	return outcomeCutOff
}

// watchdog fails the response on dropped messages and ends it when the record is terminal
// but its final marker or state event never came. It waits for a second sighting of the
// terminal record so that messages already on their way are written first.
func (sr *syncResponse) watchdog(ctx context.Context, feed jobEvents) (outcome, bool) {
	if feed.Dropped() > 0 {
		return sr.gap(broker.GapDropped), true
	}
	j, err := sr.check(ctx)
	if errors.Is(err, broker.ErrNotFound) {
		// Expired or dropped: no marker or state event will ever come.
		return sr.fail(refuse(ErrBadUpstream, "job record disappeared before the job ended")), true
	}
	if err != nil {
		if ctx.Err() == nil {
			sr.log.Warn("check job record", "err", err)
		}
		return 0, false
	}
	if !j.State.Terminal() {
		if err := sr.cannotStart(j); err != nil {
			return sr.fail(err), true
		}
		if sr.outage != nil {
			if err := sr.outage.over(ctx, j, sr.frames > 0, sr.log); err != nil {
				return sr.fail(err), true
			}
		}
		return 0, false
	}
	if !sr.terminal {
		sr.terminal = true
		sr.mend(feed, j)
		return 0, false
	}
	if sr.mend(feed, j) {
		return 0, false // the runner is being asked still, or again
	}
	return sr.ended(j), true
}

// cannotStart is the store's fault when job j waits to start and cannot before foreman
// restarts: its own store (the embedded server) takes no write until then
// (broker.NeedsRestart: a stream that failed a write, on a disk full or gone read-only),
// and a start is a write. The caller, sent nothing yet, gets the submit's 503 instead of
// a wait that lasts until the operator's restart. The job stays queued (its cancel is a
// write too); the restart cancels it, its caller gone (ADR-0024).
func (sr *syncResponse) cannotStart(j *broker.Job) error {
	waiting := j.State == broker.StateQueued || j.State == broker.StateRetrying
	if !waiting || sr.frames > 0 || sr.started || sr.s.store == nil || !sr.s.store.Config().Exclusive {
		return nil
	}
	if fault := sr.s.store.WriteFault(); broker.NeedsRestart(fault) {
		sr.log.Warn("sync job cannot start before foreman restarts; its caller is answered", "err", fault)
		return fmt.Errorf("sync job waiting: %w", fault)
	}
	return nil
}

// mend asks the runner of ended job j for the answer's messages after the last one
// taken (ADR-0078): its final marker, maybe frames before it, were lost on the way (a
// NATS node that died with them). It reports whether the runner is being asked; the
// feed bounds the asks. Only another foreman's run is asked for: this foreman's hands
// its messages over in process, and one that does not name itself (ADR-0064) is of a
// version that keeps none for a resend.
func (sr *syncResponse) mend(feed jobEvents, j *broker.Job) bool {
	_, boot := j.CurrentRunner()
	if boot == "" || (sr.s.store != nil && boot == sr.s.store.BootID()) || !finalMarkerComing(j) {
		return false
	}
	return feed.Mend()
}

// frame writes one target frame. The first one decides the status (200) and the
// Content-Type. A non-streamed JSON body is held until the final marker, so it goes out
// with a Content-Length as Ollama sends it, and a failure after it can still be a status.
func (sr *syncResponse) frame(ev broker.Event) error {
	if sr.ctype == "" {
		sr.ctype = ev.ContentType
		if sr.ctype == "" {
			sr.ctype = sr.defaultContentType()
		}
	}
	if !ollama.FramingOf(sr.ctype).Streamed() {
		sr.pending = append(sr.pending, ev.Data...)
		return nil
	}
	if !sr.started {
		sr.begin(http.StatusOK)
	}
	// The frame a client reads last: one that begins where a line (an event) begins and
	// holds nothing a client reads (a keep-alive comment, a blank line) leaves it as it was.
	if own := len(sr.boundary(isSSE(sr.ctype))) == 0; !own || ollama.Holds(sr.ctype, ev.Data) {
		sr.last, sr.lastOwn = ev.Data, own
	}
	if sr.job.Kind == broker.KindOpenAIResponses {
		// Kept across frames: the last one may hold no number (a comment, or the end of
		// a large event sent in pieces).
		if n, ok := lastSequenceNumber(ev.Data); ok {
			sr.nextSeq = n + 1
		}
	}
	return sr.write(ev.Data)
}

// writeChunk is how much of a large body one write deadline covers: the deadline
// measures a lack of progress, not the time a big answer takes over a slow link.
const writeChunk = 64 << 10

// write sends b and flushes it; each chunk gets Config.WriteTimeout to go out.
func (sr *syncResponse) write(b []byte) error {
	sr.tail = append(sr.tail, b[max(len(b)-3, 0):]...)
	sr.tail = sr.tail[max(len(sr.tail)-3, 0):]
	for first := true; first || len(b) > 0; first = false {
		n := min(len(b), writeChunk)
		if err := sr.deadline(); err != nil {
			return err
		}
		if _, err := sr.w.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return sr.flush()
}

func (sr *syncResponse) deadline() error {
	if sr.s.cfg.WriteTimeout <= 0 {
		return nil
	}
	err := sr.rc.SetWriteDeadline(time.Now().Add(sr.s.cfg.WriteTimeout))
	if errors.Is(err, http.ErrNotSupported) {
		return nil
	}
	return err
}

// boundary is what ends the stream written so far at a line (NDJSON) or an event (SSE),
// so that an error frame after a partial frame (a piece of a large frame lost in a gap,
// or a shutdown between pieces) is still read as a frame of its own. NDJSON lines end
// with LF. SSE lines end with LF, CRLF or CR, and an empty line ends an event (the event
// stream rules a client reads them by): the stream is at an event's end when its last
// line end follows another, or nothing.
func (sr *syncResponse) boundary(sse bool) []byte {
	t := sr.tail
	switch {
	case len(t) == 0:
		return nil
	case !sse:
		if t[len(t)-1] == '\n' {
			return nil
		}
		return []byte("\n")
	}
	var rest []byte
	switch {
	case bytes.HasSuffix(t, []byte("\r\n")):
		rest = t[:len(t)-2]
	case t[len(t)-1] == '\n', t[len(t)-1] == '\r':
		rest = t[:len(t)-1]
	default:
		return []byte("\n\n") // inside a line
	}
	// tail holds the last 3 bytes: rest is empty only when the stream is all one line end.
	if len(rest) == 0 || rest[len(rest)-1] == '\n' || rest[len(rest)-1] == '\r' {
		return nil
	}
	if t[len(t)-1] == '\r' {
		return []byte("\n\n") // an LF alone would make this CR a CRLF, no empty line
	}
	return []byte("\n")
}

// final handles the final marker: err is nil when the job is done, else a
// *broker.JobError that statusOf maps.
func (sr *syncResponse) final(err error) outcome {
	if err == nil {
		if !sr.started {
			if sr.ctype == "" {
				sr.ctype = sr.defaultContentType()
			}
			sr.w.Header().Set("Content-Length", strconv.Itoa(len(sr.pending)))
			sr.begin(http.StatusOK)
		}
		if err := sr.write(sr.pending); err != nil {
			return sr.writeFailed(err)
		}
		return outcomeDone
	}
	var je *broker.JobError
	if errors.As(err, &je) && je.State == broker.StateFailed {
		if text, kind, ok := openAIErrorMessage(je.Message); ok {
			// The target's OpenAI-shaped error body (the /v1 routes): an OpenAI client
			// parses error.message, so it gets the body itself when nothing was written yet.
			if !sr.started && sr.job.Kind != broker.KindChat && sr.job.Kind != broker.KindGenerate {
				status, _ := statusOf(err)
				if layerRefusal(status, sr.job.Kind, kind, text) {
					// Refused before the middleware set them (serveQueued did, as it
					// could not tell).
					sr.w.Header().Del("Cache-Control")
					sr.w.Header().Del("Connection")
				} else if sr.stream {
					sr.middlewareStreamHeaders() // set before the handler that refused
				}
				writeTargetCompatError(sr.w, status, sr.job.Kind, kind, text, je.Message)
				return outcomeError
			}
			err = &broker.JobError{State: je.State, Message: text, Status: je.Status}
		}
	}
	return sr.fail(err)
}

// openAIErrorMessage recognizes an OpenAI error body, {"error":{"message":...}}, as the
// target's error text and returns its message and error.type. A body without a message
// string is not one: relayed as it is, it would leave an OpenAI client without
// error.message.
func openAIErrorMessage(s string) (msg, kind string, ok bool) {
	if !strings.HasPrefix(s, "{") {
		return "", "", false
	}
	var e struct {
		Error *struct {
			Message *string `json:"message"`
			Type    string  `json:"type"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(s), &e); err != nil || e.Error == nil || e.Error.Message == nil {
		return "", "", false
	}
	return *e.Error.Message, e.Error.Type, true
}

// writeTargetCompatError relays the target's error body of a /v1 route (its error.type
// errType and error.message msg) with the bytes Ollama wrote it with, which the job's
// error (trimmed) no longer tells: its OpenAI and Anthropic layers' own checks answer
// through gin, and their writers encode the handler's errors with a json.Encoder, its
// newline included (layerRefusal tells which).
func writeTargetCompatError(w http.ResponseWriter, status int, jobKind broker.Kind, errType, msg, body string) {
	if layerRefusal(status, jobKind, errType, msg) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body + "\n"))
}

// layerRefusal reports whether the target's error of a /v1 route (its status, error.type
// and error.message) is a refusal of Ollama's OpenAI or Anthropic layer itself, made
// before its handler ran (see writeTargetCompatError). The OpenAI layer types its own
// 400s invalid_request_error, its handler's api_error. The Anthropic layer types every
// 400 invalid_request_error: its handler's are told by their words (anthropicHandlerRefusal).
func layerRefusal(status int, jobKind broker.Kind, errType, msg string) bool {
	if status != http.StatusBadRequest || errType != "invalid_request_error" {
		return false
	}
	return jobKind != broker.KindAnthropicMessages || !anthropicHandlerRefusal(msg)
}

// anthropicHandlerRefusal reports whether msg is a 400 of the chat handler behind Ollama's
// Anthropic layer (v0.17.4 ChatHandler and handleScheduleError): a model name it cannot
// take, a capability the model lacks ("does not support chat", "does not support
// tools"), a think value it cannot use, a remote model. Every other 400 there is the
// layer's own: a body its decoder refuses, a message it cannot convert.
func anthropicHandlerRefusal(msg string) bool {
	switch {
	case msg == "model is required", msg == "invalid model name", msg == "this server cannot run this remote model":
		return true
	case strings.HasPrefix(msg, "does not support "): // handleScheduleError's errCapabilities
		return true
	case strings.HasPrefix(msg, `"`) && (strings.HasSuffix(msg, `" does not support chat`) || strings.HasSuffix(msg, `" does not support thinking`)):
		return true
	case strings.HasPrefix(msg, "think value ") && strings.HasSuffix(msg, " is not supported for this model"):
		return true
	}
	return false
}

// ended handles a terminal job seen without its final marker. A done job whose every
// frame was lost on the way (on a NATS cluster, the runner's node may not know of this
// feed's subscription yet: interest crosses a route asynchronously) still has its answer
// in the record when the caller asked for no stream and got nothing yet: the stored
// result is that answer byte for byte.
func (sr *syncResponse) ended(j *broker.Job) outcome {
	if err := broker.Outcome(j); err != nil {
		return sr.fail(err)
	}
	if !sr.stream && !sr.started && sr.frames == 0 {
		if res, ct, ok := sr.s.storedAnswer(sr.r.Context(), j, sr.log); ok {
			sr.log.Warn("frames lost in transit; answered from the stored result", "job_id", j.ID, "result_bytes", len(res))
			sr.ctype, sr.pending = ct, res
			return sr.final(nil)
		}
	}
	return sr.gap("the job finished but its final frame never arrived")
}

// gap reports a broken token stream.
func (sr *syncResponse) gap(detail string) outcome {
	sr.log.Warn("stream gap", "detail", detail, "frames", sr.frames)
	return sr.fail(refuse(ErrBadUpstream, "stream gap: "+detail))
}

// fail ends the response with err: its status and {"error": msg} when nothing was
// written yet (writeError), else an error frame with its message in the stream's own
// format, as Ollama and OpenAI servers send them mid-stream, unless the client has the
// target's own error frame already.
func (sr *syncResponse) fail(err error) outcome {
	if !sr.started {
		if sr.stream {
			sr.middlewareStreamHeaders()
		}
		sr.s.writeError(sr.w, sr.r, err)
		return outcomeError
	}
	sse := isSSE(sr.ctype)
	frame := sr.boundary(sse)
	if sr.relayedFailure(err) {
		// The target's error frame, relayed as it came, ends the stream; one that came
		// without its line's (or event's) end is ended here, so the client reads it whole.
		if len(frame) == 0 {
			return outcomeError
		}
		return sr.endWith(frame)
	}
	_, msg := statusOf(err)
	if sse {
		frame = append(frame, sseErrorEvent(sr.job.Kind, msg, sr.nextSeq)...)
	} else {
		b, _ := json.Marshal(map[string]string{"error": msg})
		frame = append(append(frame, b...), '\n')
	}
	return sr.endWith(frame)
}

// endWith writes the last bytes of a response that ends in an error.
func (sr *syncResponse) endWith(frame []byte) outcome {
	if err := sr.write(frame); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return outcomeCutOff
		}
		return outcomeClientGone
	}
	return outcomeError
}

// relayedFailure reports whether err is the job's failure and the client already has it:
// the target ended its stream with an error frame, relayed as it came (what a client
// reads nothing in may follow it: ollama.Holds), and the worker failed the job with
// that error. A second error frame would tell the client twice. A
// frame that went on a line or an event left unfinished before it (a piece of a large
// frame, after a gap) is no error the client reads: that one still gets its own.
func (sr *syncResponse) relayedFailure(err error) bool {
	var je *broker.JobError
	if !errors.As(err, &je) || je.State != broker.StateFailed {
		return false
	}
	return sr.lastOwn && ollama.FrameError(sr.ctype, sr.last) != ""
}

func (sr *syncResponse) begin(status int) {
	sr.w.Header().Set("Content-Type", sr.ctype)
	if isSSE(sr.ctype) {
		sr.middlewareStreamHeaders()
	}
	sr.w.WriteHeader(status)
	sr.started = true
}

// middlewareStreamHeaders sets streamHeaders for the job's kind.
func (sr *syncResponse) middlewareStreamHeaders() { streamHeaders(sr.w.Header(), sr.job.Kind) }

// streamHeaders sets, on the Responses and Messages routes, the headers Ollama's
// middleware for them sets on a streamed call before its chat handler runs (v0.17.4
// ResponsesMiddleware, AnthropicMessagesMiddleware): the events go out with them, and so
// does the error answer of a call refused or failed after that middleware's checks (a
// model not found, a job that failed before its first event). net/http sends
// "Connection: keep-alive" as it is on HTTP/1.1, or "close" in its place when it closes
// the connection after the answer; HTTP/2 leaves it out.
func streamHeaders(h http.Header, kind broker.Kind) {
	if kind == broker.KindOpenAIResponses || kind == broker.KindAnthropicMessages {
		h.Set("Cache-Control", "no-cache")
		h.Set("Connection", "keep-alive")
	}
}

func (sr *syncResponse) flush() error {
	if err := sr.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// defaultContentType is what Ollama answers the request with, for a worker that did not
// say.
func (sr *syncResponse) defaultContentType() string {
	switch {
	case !sr.stream:
		return "application/json; charset=utf-8"
	case sr.job.Kind == broker.KindChat || sr.job.Kind == broker.KindGenerate:
		return ollama.ContentTypeNDJSON
	}
	return ollama.ContentTypeSSE
}

// sseErrorEvent is an error event as each SSE dialect has it: Anthropic's error event
// (Ollama's anthropic.NewError in an "error" event), the Responses API's error event
// (numbered seq, as every event of that stream is), and for the chat and legacy
// completions an OpenAI error body as the data.
func sseErrorEvent(kind broker.Kind, msg string, seq int64) []byte {
	switch kind {
	case broker.KindAnthropicMessages:
		b, _ := json.Marshal(anthropicError(http.StatusInternalServerError, msg))
		return fmt.Appendf(nil, "event: error\ndata: %s\n\n", b)
	case broker.KindOpenAIResponses:
		b, _ := json.Marshal(struct {
			Type           string `json:"type"`
			Code           string `json:"code"`
			Message        string `json:"message"`
			Param          any    `json:"param"`
			SequenceNumber int64  `json:"sequence_number"`
		}{"error", "api_error", msg, nil, seq})
		return fmt.Appendf(nil, "event: error\ndata: %s\n\n", b)
	}
	b, _ := json.Marshal(map[string]any{"error": map[string]string{"message": msg, "type": "api_error"}})
	return fmt.Appendf(nil, "data: %s\n\n", b)
}

// isSSE reports whether the answer's frames are server-sent events (ollama.FramingOf,
// the one rule the client and the worker follow too).
func isSSE(ctype string) bool { return ollama.FramingOf(ctype) == ollama.SSE }

// sequenceKey is the key of an event's number in a Responses stream. Quoted and followed
// by a colon it is a key: inside a JSON string its quotes would be escaped, and a string
// value is not followed by a colon.
var sequenceKey = []byte(`"sequence_number"`)

// lastSequenceNumber finds the last sequence_number in b: one or more events of a
// Responses stream, or a piece of a large one, whose data line need not be whole (the
// number, near the start of Ollama's events, is in their first piece). A number cut off
// at b's end is not taken.
func lastSequenceNumber(b []byte) (int64, bool) {
	for end := len(b); ; {
		i := bytes.LastIndex(b[:end], sequenceKey)
		if i < 0 {
			return 0, false
		}
		end = i
		v, ok := bytes.CutPrefix(bytes.TrimLeft(b[i+len(sequenceKey):], " \t"), []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimLeft(v, " \t")
		n := 0
		for n < len(v) && '0' <= v[n] && v[n] <= '9' {
			n++
		}
		if n == 0 || n == len(v) {
			continue
		}
		if seq, err := strconv.ParseInt(string(v[:n]), 10, 64); err == nil {
			return seq, true
		}
	}
}

package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// jobRoutes registers the async /jobs API.
func (s *Server) jobRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /jobs", s.handleSubmitJob)
	mux.HandleFunc("GET /jobs", s.handleListJobs)
	mux.HandleFunc("GET /jobs/{id}", s.handleGetJob)
	mux.HandleFunc("DELETE /jobs/{id}", s.handleCancelJob)
	mux.HandleFunc("GET /jobs/{id}/artifacts/{name}", s.handleArtifact)
	mux.HandleFunc("GET /jobs/{id}/deliveries", s.handleDeliveries)
	mux.HandleFunc("POST /jobs/{id}/deliveries/redeliver", s.handleRedeliver)
}

// handleSubmitJob queues an async job: 202 {"job_id"} with Location /jobs/<id>. Async jobs
// are not Sync, so their state events go to the webhook they name.
func (s *Server) handleSubmitJob(w http.ResponseWriter, r *http.Request) {
	body, hold, err := s.readBody(w, r)
	defer hold.release()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// Detached from the client: one leaving mid-submit must not leave a record without
	// its queue message behind.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), s.cfg.submitWait)
	defer cancel()
	id, replayed, err := s.submitJob(ctx, body, r.Header.Get("Idempotency-Key"), r.Header)
	hold.release() // the store has the body, or the submit failed
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/jobs/"+id)
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"job_id": id})
}

func (s *Server) handleGetJob(w http.ResponseWriter, r *http.Request) {
	asked := time.Now()
	j, _, err := s.store.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	v := s.jobView(r.Context(), j, true)
	s.addPosition(r.Context(), &v, asked)
	writeJSON(w, http.StatusOK, v)
}

// maxListResults bounds the bytes of job results one GET /jobs page holds: a record
// holds a result of up to 64 KiB, so a page of 1000 finished jobs could otherwise hold
// 64 MB, read into memory and built into one answer, for each such request at once and
// for as long as its client takes to read it. A page it cuts short has a next_cursor.
const maxListResults = 8 << 20

// handleListJobs lists jobs newest first: ?state=&model=&program=&limit=&cursor=. state
// may name several states, comma-separated (state=done,failed,canceled: the finished
// jobs), so one page is read for them all. A page holds at most limit jobs and
// maxListResults bytes of their results (and always one job). The answer's now is
// foreman's time of it, on the clock of the records' stamps.
func (s *Server) handleListJobs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	opt := broker.ListOptions{Model: q.Get("model"), Program: q.Get("program"), Cursor: q.Get("cursor"), MaxResultBytes: s.cfg.listResults}
	if v := q.Get("state"); v != "" {
		for _, name := range strings.Split(v, ",") {
			st := broker.State(strings.TrimSpace(name))
			if !st.Valid() {
				s.writeError(w, r, badRequest("state: unknown state "+strconv.Quote(clipInput(string(st)))))
				return
			}
			if !slices.Contains(opt.States, st) { // each once: a list has at most seven
				opt.States = append(opt.States, st)
			}
		}
	}
	if opt.Program != "" {
		if err := broker.ValidateProgram(opt.Program); err != nil {
			s.writeError(w, r, badRequest("program: "+strings.TrimPrefix(err.Error(), broker.ErrBadProgram.Error()+": ")))
			return
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			s.writeError(w, r, badRequest("limit: must be a number from 1 to 1000"))
			return
		}
		opt.Limit = n
	}
	jobs, next, err := s.store.List(r.Context(), opt)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	views := make([]jobView, 0, len(jobs))
	for _, j := range jobs {
		views = append(views, s.jobView(r.Context(), j, false))
	}
	// now: foreman's time of the answer, which a client whose clock is off takes a job's
	// age against rather than its own clock. On the clock that stamps the records
	// (created_at, started_at, finished_at: Store.Now), not the NATS server's, which GET
	// /queue's now is on for its server-stamped messages (ADR-0060): a foreman whose clock
	// is off from its server's would list a job just submitted as old as the offset.
	writeJSON(w, http.StatusOK, map[string]any{"jobs": views, "next_cursor": next, "now": s.store.Now()})
}

// cancelWait bounds how long DELETE /jobs/{id} waits for a running job to end after its
// cancellation was requested; the worker normally ends it within milliseconds.
const cancelWait = 3 * time.Second

// handleCancelJob cancels a job. A queued one is canceled at once and never runs: 200
// with the job. A running one only gets its cancellation requested, since the worker alone
// writes a running job's end: the answer waits, up to cancelWait, for the worker to end
// it — 200 with the canceled job, or 409 when it finished first — and otherwise is 202
// with the job and its pending cancel_requested. A finished job is a 409.
func (s *Server) handleCancelJob(w http.ResponseWriter, r *http.Request) {
	j, err := s.store.Cancel(r.Context(), r.PathValue("id"), "canceled by DELETE /jobs")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	log := s.log.With("job_id", j.ID, "model", j.Model)
	running := !j.State.Terminal()
	if running {
		log.Info("job cancel requested; waiting for the worker to end it")
		j = s.awaitEnd(r.Context(), j, log)
	}
	switch j.State {
	case broker.StateCanceled:
		if !running { // a running job's end is the worker's line, with its attempt
			log.Info("job canceled")
		}
		writeJSON(w, http.StatusOK, s.jobView(r.Context(), j, false))
	case broker.StateDone, broker.StateFailed:
		s.writeError(w, r, fmt.Errorf("%w: job %s ended %s before the cancel took effect", broker.ErrTerminal, j.ID, j.State))
	default:
		writeJSON(w, http.StatusAccepted, s.jobView(r.Context(), j, false))
	}
}

// awaitEnd waits until job j is terminal, cancelWait passes, the client leaves or the
// gateway is ending, and returns the latest record it saw.
func (s *Server) awaitEnd(ctx context.Context, j *broker.Job, log *slog.Logger) *broker.Job {
	ctx, cancel := context.WithTimeout(ctx, cancelWait)
	defer cancel()
	go func() {
		select {
		case <-s.ending:
			cancel()
		case <-ctx.Done():
		}
	}()
	// Subscribe before reading the record again, so the terminal write cannot slip by.
	watch, err := s.store.WatchJob(ctx, j.ID)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("watch canceled job", "err", err)
		}
		return j
	}
	defer watch.Stop()
	if cur, _, err := s.store.Get(ctx, j.ID); err == nil {
		j = cur
	}
	for !j.State.Terminal() {
		ev, err := watch.Next(ctx)
		if err != nil {
			return j
		}
		j = ev
	}
	return j
}

package worker

// Stages of a job's run that Config.Trace is told of, in the order a job that succeeds
// passes them (with EarlyCall, StageCalled may come right after StageWoken, ADR-0034). A
// per-stage trace of the hot path is what its latency work is measured with (ADR-0032);
// foreman serve sets no hook.
const (
	StageWoken      = "woken"       // the worker saw the job's queue message published
	StageFetched    = "fetched"     // the worker holds the queue message's lease
	StageRecord     = "record"      // the job's record was read
	StageCalled     = "called"      // the target call was issued
	StageStarted    = "started"     // the start write (attempt, loading/working) is stored
	StageFirstFrame = "first-frame" // the first frame of the answer is being published
	StageFinal      = "final"       // the final marker is being published (the client is answered)
)

// trace tells Config.Trace that job id reached stage.
func (w *Worker) trace(id, stage string) {
	if fn := w.cfg.Trace; fn != nil {
		fn(id, stage)
	}
}

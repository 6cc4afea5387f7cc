/*
 * The process table: fork a worker per slot, hear its heartbeat, notice its death or its
 * silence, restart it (with backoff when it keeps dying at start), and meanwhile have a
 * live worker accept on the orphaned slot's sockets so nothing queued there is stranded.
 */
#include "config.h"

#include "master/supervise.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/control.h"
#include "lib/log.h"
#include "master/daemon.h"
#include "master/generation.h"
#include "shm/permits.h"

#define QUICK_DEATH_WINDOW 2.0 /* dying before ready, or this soon after start, is a crash loop */
#define BACKOFF_FIRST 0.2      /* seconds before the second quick restart in a row */
#define BACKOFF_MAX 30.0
#define SHUTDOWN_GRACE 5.0  /* seconds past drain-timeout before the master kills what is left */
#define SYN_GRACE 0.2       /* TERM: seconds between holding off new connections and closing */
#define EXIT_WORKER_SETUP 4 /* a worker that could not set itself up (privileges, memory) */
#define EXIT_STARTUP 2
#define START_DEADLINE_MIN 10.0 /* seconds a new generation gets to serve every slot */

static unsigned proc_shm_slot(const struct proc *p)
{
    return p->gen->shm_half * SHM_SLOTS_PER_GENERATION + p->slot;
}

static void supervise_spawn(struct proc *p);
static void supervise_check_served(struct master *m, struct generation *gen);
static void supervise_run_pending(struct master *m);
static void supervise_syn_grace_cb(struct ev_loop *loop, ev_timer *timer, int revents);

static void supervise_stop_restarts(struct master *m, struct generation *gen)
{
    for (unsigned s = 0; gen != NULL && s < gen->nslots; s++)
        ev_timer_stop(m->loop, &gen->procs[s].restart_timer);
}

double supervise_start_deadline(const struct conf *conf)
{
    double deadline = 2 * conf->watchdog_timeout;

    return deadline > START_DEADLINE_MIN ? deadline : START_DEADLINE_MIN;
}

/* --- the child side of a fork ------------------------------------------------------- */

/* Called by the worker once its own signal watchers run, so no signal finds none. */
static void supervise_forget_signals(void *arg)
{
    struct master *m = arg;
    ev_signal *signals[] = {&m->sig_hup,  &m->sig_term, &m->sig_int,
                            &m->sig_quit, &m->sig_usr1, &m->sig_usr2};

    for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
        ev_signal_stop(m->loop, signals[i]);
}

static bool supervise_child_keeps(int fd, void *arg)
{
    return generation_uses_fd(arg, fd);
}

static void supervise_child_close_fds(struct master *m, struct proc *p, int master_end)
{
    close(master_end);
    listen_close_unless(&m->sockets, supervise_child_keeps, p->gen);
    if (m->pidfile_fd >= 0) {
        close(m->pidfile_fd); /* else a draining orphan would keep a new master out */
        m->pidfile_fd = -1;
    }
    if (daemon_pipe_fd() >= 0)
        close(daemon_pipe_fd());
    upgrade_close_in_child(&m->upgrade);
}

static void __attribute__((noreturn))
supervise_child(struct master *m, struct proc *p, int control_fd, int master_end, pid_t master)
{
    char err[512];

    ev_loop_fork(m->loop);
    supervise_stop(m); /* the master's watchers and channels are not this process's */
    supervise_child_close_fds(m, p, master_end);
    if (privileges_drop(&m->privileges, err, sizeof(err)) < 0) {
        log_error("worker %u: cannot drop privileges: %s", p->slot, err);
        exit(EXIT_WORKER_SETUP);
    }
    daemon_quiet(); /* a detached master's workers must not write to its old terminal */
    /* After setuid, which clears it; then make sure the master did not die meanwhile. */
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0)
        log_errno(LOG_LEVEL_WARNING, "worker %u: prctl PR_SET_PDEATHSIG", p->slot);
    if (getppid() != master) {
        log_info("worker %u: the master is gone before the worker started; exiting", p->slot);
        exit(EXIT_SUCCESS);
    }
    struct worker_spec spec = {
        .conf = p->gen->conf,
        .frontends = p->gen->frontends,
        .nfrontends = p->gen->nfrontends,
        .slot = p->slot,
        .nslots = p->gen->nslots,
        .generation = p->gen->id,
        .shm = &m->shm,
        .shm_slot = proc_shm_slot(p),
        .control_fd = control_fd,
        .forget_parent = supervise_forget_signals,
        .forget_parent_arg = m,
    };
    exit(worker_main(&spec));
}

/* --- messages from workers ---------------------------------------------------------- */

static const char *proc_describe(const struct proc *p, char *buf, size_t size)
{
    snprintf(buf, size, "worker %u (pid %ld, generation %u)", p->slot, (long)p->pid, p->gen->id);
    return buf;
}

static struct proc *supervise_pick_adopter(struct generation *gen, const struct proc *orphan)
{
    for (unsigned i = 1; i < gen->nslots; i++) {
        struct proc *q = &gen->procs[(orphan->slot + i) % gen->nslots];
        if (q->pid > 0 && q->ready && q->killed_for == NULL && q->control_fd >= 0)
            return q;
    }
    return NULL;
}

/* Have a live worker of the same generation accept on p's sockets while p is down. */
static void supervise_adopt(struct master *m, struct proc *p)
{
    char who[96];

    if (p->adopted_by >= 0 || p->gen->retiring || m->shutting_down)
        return;
    struct proc *q = supervise_pick_adopter(p->gen, p);
    if (q == NULL)
        return; /* none live: p's queue waits for p, or for the first worker to be ready */
    if (control_send(q->control_fd, CONTROL_ADOPT, p->slot, -1) < 0) {
        log_errno(LOG_LEVEL_WARNING, "%s: cannot send adopt", proc_describe(q, who, sizeof(who)));
        return;
    }
    p->adopted_by = (int)q->slot;
    log_info("worker %u (pid %ld) adopts the listening sockets of slot %u while %u is down",
             q->slot, (long)q->pid, p->slot, p->slot);
    supervise_check_served(m, p->gen);
}

static void supervise_release_adoption(struct proc *p)
{
    if (p->adopted_by < 0)
        return;
    struct proc *q = &p->gen->procs[p->adopted_by];
    p->adopted_by = -1;
    if (q->pid <= 0 || q->control_fd < 0)
        return;
    if (control_send(q->control_fd, CONTROL_RELEASE, p->slot, -1) < 0)
        log_errno(LOG_LEVEL_WARNING, "worker %u: cannot send release", q->slot);
    else
        log_info("worker %u (pid %ld) releases the sockets of slot %u", q->slot, (long)q->pid,
                 p->slot);
}

/* A newly ready worker can serve any slot still waiting for its own. */
static void supervise_adopt_orphans(struct master *m, struct generation *gen)
{
    for (unsigned s = 0; s < gen->nslots; s++) {
        struct proc *p = &gen->procs[s];
        if (p->pid <= 0 && ev_is_active(&p->restart_timer))
            supervise_adopt(m, p);
    }
}

static void supervise_on_ready(struct master *m, struct proc *p)
{
    char who[96];

    p->ready = true;
    shm_slot_set_state(&m->shm, proc_shm_slot(p),
                       p->gen->retiring ? SHM_SLOT_RETIRING : SHM_SLOT_READY);
    log_info("%s ready", proc_describe(p, who, sizeof(who)));
    supervise_release_adoption(p);
    supervise_adopt_orphans(m, p->gen);
    supervise_check_served(m, p->gen);
}

static void supervise_read_control(struct master *m, struct proc *p)
{
    struct control_msg msg;
    char who[96];
    int fd;

    while (p->control_fd >= 0) {
        int rc = control_recv(p->control_fd, &msg, &fd);
        if (rc > 0) {
            if (fd >= 0)
                close(fd); /* workers have no business sending descriptors */
            p->last_heard = ev_now(m->loop);
            if (msg.type == CONTROL_READY && !p->ready)
                supervise_on_ready(m, p);
            else if (msg.type != CONTROL_HEARTBEAT && msg.type != CONTROL_READY)
                log_warning("%s: unexpected control message %s", proc_describe(p, who, sizeof(who)),
                            control_type_name(msg.type));
            continue;
        }
        if (rc < 0 && errno == EAGAIN)
            return;
        if (rc < 0 && errno == EBADMSG) {
            log_warning("%s: malformed control message dropped",
                        proc_describe(p, who, sizeof(who)));
            continue;
        }
        /* EOF: the worker is exiting; ev_child reports how. Stop watching, or it spins. */
        ev_io_stop(m->loop, &p->control_io);
        return;
    }
}

static void supervise_control_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct proc *p = io->data;

    (void)loop;
    (void)revents;
    supervise_read_control(p->master, p);
}

/* --- starting workers ---------------------------------------------------------------- */

static void supervise_restart_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
    struct proc *p = timer->data;

    (void)loop;
    (void)revents;
    supervise_spawn(p);
}

/* NOLINTNEXTLINE(misc-no-recursion): spawn asks only for a delayed restart */
static void supervise_schedule_restart(struct master *m, struct proc *p, ev_tstamp delay,
                                       const char *why)
{
    if (delay <= 0) {
        log_warning("worker %u: restarting now", p->slot);
        supervise_spawn(p);
        return;
    }
    log_warning("worker %u: restarting in %.1fs (%s)", p->slot, delay, why);
    ev_timer_set(&p->restart_timer, delay, 0);
    ev_timer_start(m->loop, &p->restart_timer);
    supervise_adopt(m, p);
}

/* NOLINTNEXTLINE(misc-no-recursion): see supervise_schedule_restart */
static void supervise_spawn(struct proc *p)
{
    struct master *m = p->master;
    int fds[2];
    char who[96];

    if (m->shutting_down)
        return;
    if (control_pair(fds) < 0) {
        log_errno(LOG_LEVEL_ERROR, "worker %u: socketpair", p->slot);
        supervise_schedule_restart(m, p, 1.0, "no control channel");
        return;
    }
    pid_t master = getpid();
    /* Reset before the fork: the child may beat or take a permit before we run again. */
    shm_slot_begin(&m->shm, proc_shm_slot(p), p->gen->id);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        log_errno(LOG_LEVEL_ERROR, "worker %u: fork", p->slot);
        shm_slot_end(&m->shm, proc_shm_slot(p));
        close(fds[0]);
        close(fds[1]);
        supervise_schedule_restart(m, p, 1.0, "fork failed");
        return;
    }
    if (pid == 0)
        supervise_child(m, p, fds[1], fds[0], master);
    close(fds[1]);
    p->pid = pid;
    p->control_fd = fds[0];
    p->ready = false;
    p->killed_for = NULL;
    p->started = p->last_heard = ev_now(m->loop);
    spinguard_reset(&p->spin, &m->shm.slots[proc_shm_slot(p)], p->started);
    ev_io_init(&p->control_io, supervise_control_cb, p->control_fd, EV_READ);
    p->control_io.data = p;
    ev_io_start(m->loop, &p->control_io);
    shm_slot_set_pid(&m->shm, proc_shm_slot(p), pid);
    log_debug("%s started", proc_describe(p, who, sizeof(who)));
}

void supervise_start(struct master *m, struct generation *gen)
{
    for (unsigned s = 0; s < gen->nslots; s++) {
        struct proc *p = &gen->procs[s];
        ev_init(&p->restart_timer, supervise_restart_cb);
        p->restart_timer.data = p;
    }
    ev_timer_stop(m->loop, &m->start_timer);
    ev_timer_set(&m->start_timer, supervise_start_deadline(gen->conf), 0);
    ev_timer_start(m->loop, &m->start_timer);
    for (unsigned s = 0; s < gen->nslots; s++)
        supervise_spawn(&gen->procs[s]);
}

/* --- generations ---------------------------------------------------------------------- */

static unsigned generation_alive(const struct generation *gen)
{
    unsigned n = 0;

    for (unsigned s = 0; gen != NULL && s < gen->nslots; s++)
        n += gen->procs[s].pid > 0;
    return n;
}

bool supervise_any_alive(const struct master *m)
{
    return generation_alive(m->current) + generation_alive(m->old) > 0;
}

/* Every slot has a ready worker, or a ready worker accepting for it. */
static void supervise_check_served(struct master *m, struct generation *gen)
{
    if (gen->announced || gen != m->current)
        return;
    for (unsigned s = 0; s < gen->nslots; s++) {
        const struct proc *p = &gen->procs[s];
        if (!(p->pid > 0 && p->ready) && p->adopted_by < 0)
            return;
    }
    gen->announced = true;
    ev_timer_stop(m->loop, &m->start_timer);
    if (gen->id == 1) {
        log_info("sluice " PACKAGE_VERSION " ready (%u workers, generation %u)", gen->nslots,
                 gen->id);
        if (m->on_ready != NULL)
            m->on_ready(m);
    } else if (m->old == NULL) { /* the older generation died before it could be retired */
        log_info("reload: generation %u ready", gen->id);
    } else {
        log_info("reload: generation %u ready, retiring generation %u", gen->id, m->old->id);
        supervise_retire(m, m->old);
    }
    supervise_run_pending(m);
}

/* A HUP waits until one generation serves alone; this is where it stops waiting. */
static void supervise_run_pending_reload(struct master *m)
{
    if (!m->reload_pending || m->shutting_down || m->old != NULL || !m->current->announced)
        return;
    m->reload_pending = false;
    master_reload(m);
}

static void supervise_run_pending(struct master *m)
{
    supervise_run_pending_reload(m);
    upgrade_run_pending(m);
}

static void supervise_old_gone(struct master *m)
{
    log_info("generation %u has exited", m->old->id);
    supervise_stop_restarts(m, m->old);
    generation_free(m, m->old);
    m->old = NULL;
    supervise_run_pending(m);
}

/*
 * Sockets only a retired generation used close now, not when its last connection ends:
 * nobody accepts on them any more, and the kernel moves their queue to a live socket of
 * the same address when net.ipv4.tcp_migrate_req is 1.
 */
static void supervise_release_unused_sockets(struct master *m, struct generation *gen)
{
    for (size_t i = 0; i < gen->nfrontends; i++) {
        for (unsigned s = 0; s < gen->nslots; s++) {
            int *fd = &gen->frontends[i].listen_fds[s];
            if (*fd >= 0 && !generation_uses_fd(m->current, *fd)) {
                listen_release(&m->sockets, *fd);
                *fd = -1;
            }
        }
    }
}

void supervise_retire(struct master *m, struct generation *gen)
{
    gen->retiring = true;
    if (gen != m->current)
        supervise_release_unused_sockets(m, gen);
    for (unsigned s = 0; s < gen->nslots; s++) {
        struct proc *p = &gen->procs[s];
        ev_timer_stop(m->loop, &p->restart_timer);
        if (p->pid <= 0)
            continue;
        shm_slot_set_state(&m->shm, proc_shm_slot(p), SHM_SLOT_RETIRING);
        if (p->control_fd < 0 || control_send(p->control_fd, CONTROL_RETIRE, 0, -1) < 0)
            kill(p->pid, SIGTERM); /* same effect, by the other road */
    }
    if (gen == m->old && generation_alive(gen) == 0)
        supervise_old_gone(m);
}

/* --- deaths ------------------------------------------------------------------------- */

static void describe_status(int status, char *buf, size_t size)
{
    if (WIFEXITED(status))
        snprintf(buf, size, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, size, "killed by signal %d (%s)%s", WTERMSIG(status),
                 strsignal(WTERMSIG(status)), WCOREDUMP(status) ? ", core dumped" : "");
    else
        snprintf(buf, size, "ended with wait status %#x", (unsigned)status);
}

static struct proc *supervise_find(struct master *m, pid_t pid)
{
    struct generation *gens[] = {m->current, m->old};

    for (size_t g = 0; g < 2; g++)
        for (unsigned s = 0; gens[g] != NULL && s < gens[g]->nslots; s++)
            if (gens[g]->procs[s].pid == pid)
                return &gens[g]->procs[s];
    return NULL;
}

static void supervise_forget_proc(struct master *m, struct proc *p)
{
    ev_io_stop(m->loop, &p->control_io);
    if (p->control_fd >= 0)
        close(p->control_fd);
    p->control_fd = -1;
    p->pid = 0;
    p->ready = false;
    unsigned freed = permits_reclaim(&m->shm, proc_shm_slot(p));
    shm_slot_end(&m->shm, proc_shm_slot(p));
    if (freed > 0)
        log_info("worker %u: %u handshake permits it held are free again", p->slot, freed);
}

/* Slots whose sockets p was serving need another adopter now. */
static void supervise_reassign_adoptions(struct master *m, struct proc *dead)
{
    for (unsigned s = 0; s < dead->gen->nslots; s++) {
        struct proc *o = &dead->gen->procs[s];
        if (o->adopted_by == (int)dead->slot) {
            o->adopted_by = -1;
            if (o->pid <= 0)
                supervise_adopt(m, o);
        }
    }
}

static ev_tstamp supervise_backoff(struct proc *p, bool was_ready, ev_tstamp now)
{
    if (was_ready && now - p->started >= QUICK_DEATH_WINDOW) {
        p->quick_deaths = 0;
        return 0;
    }
    p->quick_deaths++;
    if (p->quick_deaths <= 1)
        return 0;
    ev_tstamp delay = BACKOFF_FIRST;
    for (unsigned i = 2; i < p->quick_deaths && delay < BACKOFF_MAX; i++)
        delay *= 2;
    return delay < BACKOFF_MAX ? delay : BACKOFF_MAX;
}

static void supervise_reaped(struct master *m, struct proc *p, int status)
{
    char who[96], how[96], why[96];
    bool asked_to_stop = p->gen->retiring || m->shutting_down;
    bool was_ready = p->ready;

    proc_describe(p, who, sizeof(who));
    describe_status(status, how, sizeof(how));
    if (asked_to_stop && p->killed_for == NULL)
        log_info("%s %s", who, how);
    else
        log_warning("%s %s%s%s", who, p->killed_for ? p->killed_for : "", p->killed_for ? ", " : "",
                    how);
    supervise_forget_proc(m, p);
    supervise_reassign_adoptions(m, p);
    /*
     * The serving generation is restarted, and so is the older one until it is retired:
     * a reload that fails must still have a generation to fall back to.
     */
    if (!asked_to_stop) {
        ev_tstamp delay = supervise_backoff(p, was_ready, ev_now(m->loop));
        snprintf(why, sizeof(why), "died at start-up %u times in a row", p->quick_deaths);
        shm_count_restart(&m->shm, proc_shm_slot(p));
        supervise_schedule_restart(m, p, delay, why);
    } else if (p->gen == m->old && generation_alive(m->old) == 0) {
        supervise_old_gone(m);
    }
    if (m->shutting_down && !supervise_any_alive(m))
        ev_break(m->loop, EVBREAK_ALL);
}

static void supervise_child_cb(struct ev_loop *loop, ev_child *child, int revents)
{
    struct master *m = child->data;
    struct proc *p = supervise_find(m, child->rpid);

    (void)loop;
    (void)revents;
    if (p == NULL) {
        if (!upgrade_reaped(m, child->rpid, child->rstatus))
            log_debug("reaped pid %ld, not a worker", (long)child->rpid);
        return;
    }
    supervise_reaped(m, p, child->rstatus);
}

/* --- the watchdog --------------------------------------------------------------------- */

static void supervise_kill_for(struct proc *p, const char *why)
{
    p->killed_for = why;
    if (kill(p->pid, SIGKILL) < 0 && errno != ESRCH)
        log_errno(LOG_LEVEL_ERROR, "kill %ld", (long)p->pid);
}

static void supervise_check_heartbeat(struct master *m, struct proc *p, ev_tstamp now)
{
    char who[96];

    if (p->pid <= 0 || p->killed_for != NULL)
        return;
    double limit = p->gen->conf->watchdog_timeout;
    if (now - p->last_heard <= limit)
        return;
    supervise_read_control(m, p); /* beats may be waiting unread: judge only after them */
    if (now - p->last_heard <= limit)
        return;
    log_error("%s stuck: no heartbeat for %.1fs, killing it", proc_describe(p, who, sizeof(who)),
              now - p->last_heard);
    supervise_kill_for(p, "stuck");
}

/* Spinning is judged on the shared counters: a spinning loop may still beat. */
static void supervise_check_spin(struct master *m, struct proc *p, ev_tstamp now)
{
    char who[96], why[512];

    if (p->pid <= 0 || p->killed_for != NULL || !p->ready)
        return;
    if (!spinguard_check(&p->spin, &m->shm.slots[proc_shm_slot(p)], p->gen->conf, now, why,
                         sizeof(why)))
        return;
    log_error("%s spinning: %s; killing it", proc_describe(p, who, sizeof(who)), why);
    supervise_kill_for(p, "spinning");
}

static void supervise_watchdog_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
    struct master *m = timer->data;

    (void)revents;
    ev_tstamp now = ev_now(loop);
    for (int g = 0; g < 2; g++) {
        struct generation *gen = g == 0 ? m->current : m->old;
        for (unsigned s = 0; gen != NULL && s < gen->nslots; s++) {
            supervise_check_heartbeat(m, &gen->procs[s], now);
            /* Reading a beat can retire and free the older generation: look again. */
            if (gen != (g == 0 ? m->current : m->old))
                break;
            supervise_check_spin(m, &gen->procs[s], now);
        }
    }
    /* NOLINTNEXTLINE(clang-analyzer-core.NullDereference): only old may be NULL above */
    timer->repeat = m->current->conf->heartbeat_interval;
    ev_timer_again(loop, timer);
}

void supervise_grace(struct master *m)
{
    struct generation *gens[] = {m->current, m->old};

    ev_now_update(m->loop);
    for (size_t g = 0; g < 2; g++)
        for (unsigned s = 0; gens[g] != NULL && s < gens[g]->nslots; s++)
            gens[g]->procs[s].last_heard = ev_now(m->loop);
}

/*
 * A generation that cannot serve every slot in time: at start-up, give up (exit 2, so a
 * daemon's caller and an init system see it); after a reload, keep the one that serves.
 */
static void supervise_start_timeout_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
    struct master *m = timer->data;
    struct generation *failed = m->current, *previous = m->old;

    (void)loop;
    (void)revents;
    if (failed->announced || m->shutting_down)
        return;
    if (previous == NULL) {
        log_error("no worker of generation %u could serve within %.0fs: giving up", failed->id,
                  supervise_start_deadline(failed->conf));
        m->exit_status = EXIT_STARTUP;
        /* A new master's workers may already hold clients of the old master's sockets. */
        supervise_shutdown(m, m->sockets_shared);
        return;
    }
    log_error("reload: generation %u does not serve within %.0fs; generation %u keeps serving",
              failed->id, supervise_start_deadline(failed->conf), previous->id);
    m->current = previous;
    m->old = failed;
    master_apply_config(m, failed->conf, previous);
    for (unsigned s = 0; s < previous->nslots; s++)
        if (previous->procs[s].pid <= 0)
            supervise_spawn(&previous->procs[s]);
    supervise_retire(m, failed);
}

void supervise_init(struct master *m)
{
    ev_init(&m->start_timer, supervise_start_timeout_cb);
    m->start_timer.data = m;
    ev_init(&m->syn_grace_timer, supervise_syn_grace_cb);
    m->syn_grace_timer.data = m;
    ev_child_init(&m->child_watcher, supervise_child_cb, 0, 0);
    m->child_watcher.data = m;
    ev_child_start(m->loop, &m->child_watcher);
    ev_init(&m->watchdog_timer, supervise_watchdog_cb);
    m->watchdog_timer.repeat = m->current->conf->heartbeat_interval;
    m->watchdog_timer.data = m;
    ev_timer_again(m->loop, &m->watchdog_timer);
}

/* --- stopping ------------------------------------------------------------------------- */

static void supervise_kill_all(struct master *m, int sig)
{
    struct generation *gens[] = {m->current, m->old};

    for (size_t g = 0; g < 2; g++)
        for (unsigned s = 0; gens[g] != NULL && s < gens[g]->nslots; s++)
            if (gens[g]->procs[s].pid > 0 && kill(gens[g]->procs[s].pid, sig) < 0 && errno != ESRCH)
                log_errno(LOG_LEVEL_ERROR, "kill %ld", (long)gens[g]->procs[s].pid);
}

static void supervise_shutdown_timeout_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
    struct master *m = timer->data;

    (void)loop;
    (void)revents;
    log_warning("workers still running past the drain deadline: killing them");
    supervise_kill_all(m, SIGKILL);
}

static void supervise_close_and_stop(struct master *m, bool drain)
{
    double deadline = m->current->conf->drain_timeout;

    if (m->old != NULL && m->old->conf->drain_timeout > deadline)
        deadline = m->old->conf->drain_timeout;
    /* Nobody will accept again: with the workers' copies closed too, new clients are refused. */
    listen_close_all(&m->sockets);
    if (drain) {
        supervise_retire(m, m->current);
        if (m->old != NULL)
            supervise_retire(m, m->old);
    } else {
        supervise_kill_all(m, SIGQUIT);
        deadline = 0;
    }
    if (!supervise_any_alive(m)) {
        ev_break(m->loop, EVBREAK_ALL);
        return;
    }
    ev_timer_stop(m->loop, &m->shutdown_timer); /* QUIT after TERM: the sooner deadline */
    ev_timer_init(&m->shutdown_timer, supervise_shutdown_timeout_cb, deadline + SHUTDOWN_GRACE, 0);
    m->shutdown_timer.data = m;
    ev_timer_start(m->loop, &m->shutdown_timer);
}

static void supervise_syn_grace_cb(struct ev_loop *loop, ev_timer *timer, int revents)
{
    (void)loop;
    (void)revents;
    supervise_close_and_stop(timer->data, true);
}

static void supervise_begin_shutdown(struct master *m)
{
    m->shutting_down = true;
    m->reload_pending = false;
    m->upgrade.pending = false;
    ev_timer_stop(m->loop, &m->start_timer);
    ev_timer_stop(m->loop, &m->syn_grace_timer); /* QUIT during TERM's grace: stop now */
    supervise_stop_restarts(m, m->current);
    supervise_stop_restarts(m, m->old);
}

void supervise_hand_over(struct master *m)
{
    supervise_begin_shutdown(m);
    supervise_close_and_stop(m, true);
}

void supervise_shutdown(struct master *m, bool drain)
{
    supervise_begin_shutdown(m);
    /* A SYN filter on shared sockets would hold off the old master's clients too. */
    if (!drain || m->sockets_shared) {
        supervise_close_and_stop(m, drain);
        return;
    }
    /*
     * Closing a listener resets every connection in its queue, and a balancer cannot retry
     * a connection it saw established. So new connections are held off first (a dropped
     * SYN is sent again a second later and finds the port closed: refused, and retried
     * elsewhere), the workers go on accepting for SYN_GRACE what handshakes under way
     * still bring, and only then is everything closed.
     */
    listen_drop_syns(&m->sockets);
    ev_timer_set(&m->syn_grace_timer, SYN_GRACE, 0);
    ev_timer_start(m->loop, &m->syn_grace_timer);
}

void supervise_send_log_file(struct master *m, int fd)
{
    struct generation *gens[] = {m->current, m->old};

    for (size_t g = 0; g < 2; g++) {
        for (unsigned s = 0; gens[g] != NULL && s < gens[g]->nslots; s++) {
            struct proc *p = &gens[g]->procs[s];
            if (p->pid > 0 && p->control_fd >= 0 &&
                control_send(p->control_fd, CONTROL_LOG_FILE, 0, fd) < 0)
                log_errno(LOG_LEVEL_WARNING, "worker %u: cannot pass the new log file", p->slot);
        }
    }
}

void supervise_stop(struct master *m)
{
    struct generation *gens[] = {m->current, m->old};

    ev_child_stop(m->loop, &m->child_watcher);
    ev_timer_stop(m->loop, &m->watchdog_timer);
    ev_timer_stop(m->loop, &m->shutdown_timer);
    ev_timer_stop(m->loop, &m->syn_grace_timer);
    ev_timer_stop(m->loop, &m->start_timer);
    for (size_t g = 0; g < 2; g++) {
        for (unsigned s = 0; gens[g] != NULL && s < gens[g]->nslots; s++) {
            struct proc *p = &gens[g]->procs[s];
            ev_timer_stop(m->loop, &p->restart_timer);
            ev_io_stop(m->loop, &p->control_io);
            if (p->control_fd >= 0)
                close(p->control_fd);
            p->control_fd = -1;
        }
    }
}

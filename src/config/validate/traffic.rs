//! How requests are carried: failover and retries, streams, timeouts,
//! limits and the access log.

use super::*;

pub(super) fn statuses(codes: &[u16], path: &str, errs: &mut Errors) {
    for (i, code) in codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            errs.push(
                format!("{path}[{i}]"),
                format!("{code} is not an HTTP status"),
            );
        }
    }
}

pub(super) fn failover_spec(f: FailoverFile, errs: &mut Errors) -> FailoverSpec {
    let FailoverFile {
        max_retries: _,
        retry_on_status,
        retry_on_error_events,
        retry_budget,
        retry_budget_min,
        move_pin,
        move_pin_after,
        on_eject,
    } = f;
    let retry_on_status = retry_on_status.unwrap_or_else(|| Defaults::RETRY_ON_STATUS.to_vec());
    statuses(&retry_on_status, "failover.retry_on_status", errs);
    let move_pin_after = number(
        move_pin_after,
        Defaults::MOVE_PIN_AFTER,
        (1, 1000),
        "failover.move_pin_after",
        errs,
    );
    let move_pin = match move_pin.as_deref().unwrap_or("after_failures") {
        "never" => MovePin::Never,
        "after_failures" => MovePin::AfterFailures(move_pin_after),
        "at_once" => MovePin::AtOnce,
        other => {
            errs.push(
                "failover.move_pin",
                format!("{other:?}: must be never, after_failures or at_once"),
            );
            MovePin::AfterFailures(move_pin_after)
        }
    };
    let on_eject = match on_eject.as_deref().unwrap_or("keep") {
        "keep" => OnEject::Keep,
        "move" => OnEject::Move,
        other => {
            errs.push(
                "failover.on_eject",
                format!("{other:?}: must be keep or move"),
            );
            OnEject::Keep
        }
    };
    FailoverSpec {
        retry_on_status,
        retry_on_error_events: retry_on_error_events.unwrap_or_else(|| {
            Defaults::RETRY_ON_ERROR_EVENTS
                .iter()
                .map(|s| s.to_string())
                .collect()
        }),
        retry_budget: number(
            retry_budget,
            Defaults::RETRY_BUDGET,
            (0.0, 1.0),
            "failover.retry_budget",
            errs,
        ),
        retry_budget_min: number(
            retry_budget_min,
            Defaults::RETRY_BUDGET_MIN,
            (0, 1_000_000),
            "failover.retry_budget_min",
            errs,
        ),
        move_pin,
        on_eject,
    }
}

pub(super) fn access_log_spec(a: AccessLogFile, errs: &mut Errors) -> AccessLogSpec {
    let AccessLogFile {
        enabled,
        format,
        path,
        sample,
        query,
        buffer,
    } = a;
    let format = match format.as_deref() {
        None | Some("json") => AccessLogFormat::Json,
        Some("combined") => AccessLogFormat::Combined,
        Some(other) => {
            errs.push(
                "access_log.format",
                format!("must be json or combined, not {other:?}"),
            );
            AccessLogFormat::Json
        }
    };
    let path = match path.as_deref() {
        None | Some("stdout") => AccessLogPath::Stdout,
        Some("") => {
            errs.push("access_log.path", "must be stdout or a file path");
            AccessLogPath::Stdout
        }
        Some(p) => AccessLogPath::File(PathBuf::from(p)),
    };
    let sample = sample.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample) {
        errs.push("access_log.sample", "must be from 0 to 1");
    }
    AccessLogSpec {
        enabled: enabled.unwrap_or(true),
        format,
        path,
        sample: sample.clamp(0.0, 1.0),
        query: query.unwrap_or(false),
        buffer: number(
            buffer,
            Defaults::ACCESS_LOG_BUFFER,
            (16, 1 << 20),
            "access_log.buffer",
            errs,
        ),
    }
}

pub(super) fn streams_spec(s: StreamsFile, errs: &mut Errors) -> StreamsSpec {
    let StreamsFile {
        hold_first_event,
        first_event_timeout,
        idle_timeout,
    } = s;
    StreamsSpec {
        hold_first_event: hold_first_event.unwrap_or(true),
        first_event_timeout: duration(
            first_event_timeout,
            Defaults::FIRST_EVENT_TIMEOUT,
            (MS, HOUR),
            "streams.first_event_timeout",
            errs,
        ),
        idle_timeout: duration(
            idle_timeout,
            Defaults::STREAM_IDLE_TIMEOUT,
            (MS, DAY),
            "streams.idle_timeout",
            errs,
        ),
    }
}

pub(super) fn timeouts_spec(t: TimeoutsFile, errs: &mut Errors) -> Timeouts {
    let TimeoutsFile {
        connect,
        read,
        write,
        pool_idle,
        client_idle,
        client_header,
        client_body,
    } = t;
    let client_idle = duration(
        client_idle,
        Defaults::CLIENT_IDLE,
        (SECOND, DAY),
        "timeouts.client_idle",
        errs,
    );
    if client_idle.subsec_nanos() != 0 {
        errs.push("timeouts.client_idle", "must be whole seconds");
    }
    Timeouts {
        connect: duration(
            connect,
            Defaults::CONNECT_TIMEOUT,
            (MS, 10 * MINUTE),
            "timeouts.connect",
            errs,
        ),
        read: duration(
            read,
            Defaults::READ_TIMEOUT,
            (MS, DAY),
            "timeouts.read",
            errs,
        ),
        write: duration(
            write,
            Defaults::WRITE_TIMEOUT,
            (MS, DAY),
            "timeouts.write",
            errs,
        ),
        pool_idle: duration(
            pool_idle,
            Defaults::POOL_IDLE,
            (MS, DAY),
            "timeouts.pool_idle",
            errs,
        ),
        client_idle,
        client_header: duration(
            client_header,
            Defaults::CLIENT_HEADER,
            (MS, HOUR),
            "timeouts.client_header",
            errs,
        ),
        client_body: duration(
            client_body,
            Defaults::CLIENT_BODY,
            (MS, HOUR),
            "timeouts.client_body",
            errs,
        ),
    }
}

pub(super) fn limits_spec(l: LimitsFile, errs: &mut Errors) -> LimitsSpec {
    let LimitsFile {
        max_connections,
        max_header_bytes,
        max_uri_bytes,
        body_read_memory,
        body_memory_per_request,
        body_disk,
        body_spill_dir,
        min_body_rate,
    } = l;
    let body_disk = number(
        body_disk,
        Defaults::BODY_DISK,
        (0, Limits::MAX_BODY_DISK),
        "limits.body_disk",
        errs,
    );
    let body_spill_dir = super::spill::spill_dir(body_spill_dir, body_disk > 0, errs);
    let max_header_bytes = number(
        max_header_bytes,
        Defaults::MAX_HEADER_BYTES,
        (1024, Limits::MAX_HEADER_BYTES),
        "limits.max_header_bytes",
        errs,
    );
    LimitsSpec {
        max_connections: number(
            max_connections,
            Defaults::MAX_CONNECTIONS,
            (1, Limits::MAX_CONNECTIONS),
            "limits.max_connections",
            errs,
        ),
        max_header_bytes,
        max_uri_bytes: number(
            max_uri_bytes,
            Defaults::MAX_URI_BYTES.min(max_header_bytes),
            (64, max_header_bytes),
            "limits.max_uri_bytes",
            errs,
        ),
        body_read_memory: number(
            body_read_memory,
            Defaults::BODY_READ_MEMORY,
            (0, Limits::MAX_BODY_BYTES * 64),
            "limits.body_read_memory",
            errs,
        ),
        body_memory_per_request: number(
            body_memory_per_request,
            Defaults::BODY_MEMORY_PER_REQUEST,
            (4096, Limits::MAX_BODY_BYTES),
            "limits.body_memory_per_request",
            errs,
        ),
        body_disk,
        body_spill_dir,
        min_body_rate: number(
            min_body_rate,
            Defaults::MIN_BODY_RATE,
            (0, Limits::MAX_BODY_BYTES),
            "limits.min_body_rate",
            errs,
        ),
    }
}

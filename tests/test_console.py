"""What the local launcher's console shows of a task's output: everything but the noise."""

import io

from launchers.console import JobConsole, JobLine, LineFilter

# Lines as TensorFlow and gRPC print them (from a chief's log at the end of a job).
REMOVE_FAILED = (
    b"E0000 00:00:1796138439.181485    8383 context.cc:911] Failed to remove function "
    b"remotely due to failed to connect to all addresses; last error: UNKNOWN: "
    b"ipv4:127.0.0.1:61066: Failed to connect to remote host: Connection refused\n"
)
GRPC_DETAILS = [
    b"Additional GRPC error information from remote target /job:ps/replica:0/task:0 while "
    b"calling /tensorflow.eager.EagerService/Enqueue:\n",
    b':UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"failed to connect"}\n',
    b"This could happen if the remote target has been disconnected from the client.\n",
]
RETRACING = (
    b"WARNING:tensorflow:5 out of the last 5 calls to <function MultiDeviceSaver.save> "
    b"triggered tf.function retracing. Tracing is expensive and ...\n"
)
PROGRESS = (
    b"train | step:    600/1500 | loss: 0.5930 | accuracy: 0.7900 | examples/s:    812.5 | "
    b"eta: 0:41\n"
)
EVAL = b"eval | step:    300 | loss: 0.9100 | accuracy: 0.6533 | examples: 600\n"


def shown(lines: list[bytes]) -> list[bytes]:
    console = LineFilter()
    return [line for line in lines if console.shows(line)]


def test_the_coordinators_clean_up_noise_and_retracing_advice_stay_off_the_console():
    lines = [PROGRESS, REMOVE_FAILED, *GRPC_DETAILS, REMOVE_FAILED, *GRPC_DETAILS, RETRACING]
    assert shown([*lines, PROGRESS]) == [PROGRESS, PROGRESS]


def test_grpc_details_of_a_real_error_still_reach_the_console():
    error = b"tensorflow.python.framework.errors_impl.UnavailableError: ps-0 is gone\n"
    assert shown([error, *GRPC_DETAILS]) == [error, *GRPC_DETAILS]


def test_a_failed_closure_is_reported_once_by_disttrain_not_again_by_tensorflow():
    # As the chief printed them for `data.on_bad_file: fail` (two closures failed).
    closure_error = [
        b"ERROR:tensorflow: /job:worker/task:0 encountered the following error when processing "
        b"closure: InvalidArgumentError():Graph execution error:\n",
        b"\n",
        b"Detected at node Assert/Assert defined at (most recent call last):\n",
        b"<stack traces unavailable>\n",
        b"Error in user-defined function passed to MapDataset:23 transformation with iterator: "
        b"Iterator::Root::Map: assertion failed: [bad image file (data.on_bad_file: fail):]\n",
        b"\t [[{{node Assert/Assert}}]]\n",
        b"\t [[RemoteCall]]\n",
        *GRPC_DETAILS[:2],
    ]
    error = b"error: data.on_bad_file is fail and this file is not a decodable image: a.jpg\n"
    assert shown([PROGRESS, *closure_error, *closure_error, error]) == [PROGRESS, error]
    workers_copy = [
        b"E0000 00:00:1796150061.523864    5723 grpc_util.h:104] Truncated error message: "
        b"INVALID_ARGUMENT: 2 root error(s) found.\n",
        b"  (0) INVALID_ARGUMENT: {{function_node __inference_train_chunk_1616}} Error in\n",
        b"\t [[{{node Assert/Assert}}]]\n",
        *GRPC_DETAILS[:2],
        b"0 successful operations.\n",
        b"0 derived errors ignored.\n",
    ]
    assert shown([*workers_copy, PROGRESS]) == [PROGRESS]
    traceback = b"Traceback (most recent call last):\n"
    assert shown([*closure_error, traceback, b"  File x\n"]) == [traceback, b"  File x\n"]


def test_the_job_line_follows_the_chiefs_progress_and_the_last_evaluation():
    job = JobLine("mnist")
    assert job.render() == "job mnist | starting"
    for line in (PROGRESS, EVAL, b"worker-0 | something else\n"):
        job.read(line.decode())
    assert job.render() == (
        "job mnist | step 600/1500 | 812.5 ex/s | eta 0:41 | eval acc 0.6533 @300"
    )


def test_without_a_terminal_lines_pass_through_as_they_came():
    out = io.StringIO()
    with JobConsole("mnist", stream=out) as console:
        console.show("[chief-0] ", PROGRESS)
    assert out.getvalue() == "[chief-0] " + PROGRESS.decode()


def test_on_a_terminal_the_job_line_stays_below_the_task_lines():
    out = io.StringIO()
    with JobConsole("mnist", stream=out, live=True) as console:
        console.show("[chief-0] ", PROGRESS)
        console.show("[evaluator-0] ", EVAL)
        drawn = out.getvalue()
    assert "[chief-0] train | step:    600/1500" in drawn
    assert drawn.rindex("[evaluator-0] eval | step:") < drawn.rindex("eval acc 0.6533")
    assert "job mnist | step 600/1500 | 812.5 ex/s | eta 0:41" in drawn


def test_verbose_shows_the_noise_too():
    console = LineFilter("verbose")
    assert [line for line in [REMOVE_FAILED, *GRPC_DETAILS] if console.shows(line)] == [
        REMOVE_FAILED,
        *GRPC_DETAILS,
    ]


def test_quiet_shows_only_what_is_not_an_info_log_line():
    info = b"2026-12-01T15:37:39 INFO train | step: 10/300\n"
    warning = b"2026-12-01T15:37:40 WARNING checkpoint | WARNING | retention skipped\n"
    traceback = b"Traceback (most recent call last):\n"
    console = LineFilter("quiet")
    assert [line for line in [info, warning, traceback] if console.shows(line)] == [
        warning,
        traceback,
    ]

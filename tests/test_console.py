"""What the local launcher's console shows of a task's output: everything but the noise."""

from launchers.local import ConsoleFilter

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
PROGRESS = b"train | step:   1500/1500 | loss: 0.5930 | accuracy: 0.7900\n"


def shown(lines: list[bytes]) -> list[bytes]:
    console = ConsoleFilter()
    return [line for line in lines if console.shows(line)]


def test_the_coordinators_clean_up_noise_and_retracing_advice_stay_off_the_console():
    lines = [PROGRESS, REMOVE_FAILED, *GRPC_DETAILS, REMOVE_FAILED, *GRPC_DETAILS, RETRACING]
    assert shown([*lines, PROGRESS]) == [PROGRESS, PROGRESS]


def test_grpc_details_of_a_real_error_still_reach_the_console():
    error = b"tensorflow.python.framework.errors_impl.UnavailableError: ps-0 is gone\n"
    assert shown([error, *GRPC_DETAILS]) == [error, *GRPC_DETAILS]

package streamrank.flink;

/** Why a record is not a valid event: the dead-letter reason code and a detail for people. */
public final class Rejected extends Exception {
    public final String reason;
    public final String detail;

    public Rejected(String reason, String detail) {
        super(reason + ": " + detail, null, false, false);
        this.reason = reason;
        this.detail = detail;
    }
}

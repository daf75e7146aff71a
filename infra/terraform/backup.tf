# Cluster backup (Velero, docs/recovery.md): the bucket its schedules write to and its IRSA role.
resource "aws_s3_bucket" "cluster_backup_bucket" {
  #checkov:skip=CKV_AWS_18:Velero's backups are written only by its IRSA role; CloudTrail records the calls, and an access-log bucket here would need its own
  #checkov:skip=CKV_AWS_21:Velero names each backup uniquely and deletes it itself at the end of its TTL; versioning would keep what Velero means to delete
  #checkov:skip=CKV_AWS_144:The backups restore this region's cluster; a lost region's cluster is rebuilt from git (docs/recovery.md), not from these
  #checkov:skip=CKV2_AWS_62:Nothing reacts to a new backup; Velero reports its own schedule's failures
  bucket = "${local.name}-cluster-backup-${local.account}"
}

resource "aws_s3_bucket_server_side_encryption_configuration" "cluster_backup_bucket" {
  bucket = aws_s3_bucket.cluster_backup_bucket.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.platform_key.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "cluster_backup_bucket" {
  bucket                  = aws_s3_bucket.cluster_backup_bucket.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "cluster_backup_bucket" {
  bucket = aws_s3_bucket.cluster_backup_bucket.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "cluster_backup_bucket" {
  bucket = aws_s3_bucket.cluster_backup_bucket.id
  rule {
    id     = "backups-35-days"
    status = "Enabled"
    filter {}
    expiration {
      days = 35 # the schedules keep 30 days (ttl 720h); a few days' margin for Velero's own clean-up
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

resource "aws_s3_bucket_policy" "cluster_backup_bucket_policy" {
  bucket = aws_s3_bucket.cluster_backup_bucket.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.cluster_backup_bucket.arn, "${aws_s3_bucket.cluster_backup_bucket.arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
      {
        Sid       = "DenyTlsBelow12"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [aws_s3_bucket.cluster_backup_bucket.arn, "${aws_s3_bucket.cluster_backup_bucket.arn}/*"]
        Condition = { NumericLessThan = { "s3:TlsVersion" = "1.2" } }
      },
    ]
  })
}

resource "aws_iam_role" "velero_role" {
  description        = "IRSA role of Velero (velero/velero) - its backup bucket only"
  assume_role_policy = local.irsa_trust["velero"]
}

resource "aws_iam_role_policy" "velero_role" {
  name = "write-the-cluster-backups"
  role = aws_iam_role.velero_role.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "TheBackupObjects"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
        Resource = "${aws_s3_bucket.cluster_backup_bucket.arn}/*"
      },
      {
        Sid      = "TheBackupBucket"
        Effect   = "Allow"
        Action   = "s3:ListBucket"
        Resource = aws_s3_bucket.cluster_backup_bucket.arn
      },
      {
        Sid      = "EncryptWithThePlatformKey"
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource = aws_kms_key.platform_key.arn
      },
    ]
  })
}

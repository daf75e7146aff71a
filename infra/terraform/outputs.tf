# infra/platform.yaml's outputs. template.yaml imports the CloudFormation exports; with this module, pass these to
# the SAM stack as parameters instead (VpcId, VpcCidr, PrivateSubnetIds, EksOidcIssuer, EndpointSecurityGroupId).
output "cluster_name" {
  value = aws_eks_cluster.cluster.name
}
output "vpc_id" {
  value = local.vpc_id
}
output "vpc_cidr" {
  value = local.vpc_cidr
}
output "private_subnet_ids" {
  value = join(",", local.private_subnet_ids)
}
output "public_subnet_ids" {
  value = local.create_vpc ? join(",", [aws_subnet.subnet["public_subnet_a"].id, aws_subnet.subnet["public_subnet_b"].id]) : ""
}
output "oidc_issuer" {
  description = "The cluster's OIDC issuer without https://, the condition-key prefix of IRSA trust policies"
  value       = local.issuer
}
output "endpoint_security_group_id" {
  value = aws_security_group.endpoint_security_group.id
}
output "s3_prefix_list_id" {
  description = "template.yaml's S3PrefixListId: the S3 gateway endpoint's prefix list"
  value       = aws_vpc_endpoint.s3_endpoint.prefix_list_id
}
output "gateway_s3_endpoint_url" {
  description = "AWS_ENDPOINT_URL_S3 of the DICOM gateway"
  value       = "https://bucket.${trimprefix(aws_vpc_endpoint.gateway_s3_endpoint.dns_entry[0].dns_name, "*.")}"
}
output "oidc_provider_arn" {
  value = aws_iam_openid_connect_provider.oidc_provider.arn
}
output "cluster_security_group_id" {
  value = aws_eks_cluster.cluster.vpc_config[0].cluster_security_group_id
}
output "load_balancer_controller_role_arn" {
  value = aws_iam_role.controller_role["load_balancer_controller"].arn
}
output "cluster_autoscaler_role_arn" {
  value = aws_iam_role.controller_role["cluster_autoscaler"].arn
}
output "cluster_backup_bucket_name" {
  description = "Velero's backup location (infra/gitops/backup)"
  value       = aws_s3_bucket.cluster_backup_bucket.id
}
output "velero_role_arn" {
  value = aws_iam_role.velero_role.arn
}
